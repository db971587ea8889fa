"""How far above one network the same data lets an ensemble go: weight files evaluated alone and as
averaged-softmax ensembles on the 5k held-out split, without and with flip TTA (issue 13).

    python benchmarks/ensemble_holdout.py --data DIR A.safetensors B.safetensors [C.safetensors ...]

An ensemble of networks trained apart is a cheap estimate of what more capacity, distillation from
those networks, or a longer search could still buy on these images: if averaging several resnet20s
stays below a goal, a single resnet20 reaching it would have to beat the ensemble. Every file must
hold out the same split (its recipe's ``data.val_size`` and ``data.split_seed``); the held-out images
are those ``resnets eval --holdout`` uses, with each file's own preprocessing. The last two columns score the
mirrored images alone and count how often their answer is the original's: a network trained with random flips
should score them as it scores the originals, and where it does not, flip TTA (their average) gains little.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import torch

from resnets.data import holdout_split, open_dataset
from resnets.data.split import recipe_data
from resnets.runtime import open_backend
from resnets.train.evaluate import check_classes, eval_batches, tta_logits


@torch.no_grad()
def held_out_probabilities(weights: str, data: str, dataset) -> tuple[dict[str, torch.Tensor], dict]:
    """Predicted probabilities of ``weights`` on its held-out images, without and with flip TTA (as
    ``resnets eval`` computes them), and what an ensemble must share: the held-out images, their
    labels in the network's class order, the classes, the recipe's (val_size, split_seed)."""
    net = open_backend(weights, None, device=torch.device("cpu"))
    recipe = recipe_data(net.metadata)
    val = holdout_split(data, net.metadata, None, None, dataset=dataset).val
    classes = check_classes(net, net.metadata, val.info.classes, weights, data)
    remap = torch.tensor([classes.index(c) for c in val.info.classes])
    probs = {"none": [], "flip": []}
    for x, _ in eval_batches(val, net.prepared(), 500, torch.device("cpu")):
        plain = net(x).float()  # once: the flip TTA average reuses it
        probs["none"].append(plain.softmax(1))
        probs["flip"].append(tta_logits(net, x, "flip", plain=plain).softmax(1))
    shared = {"images": val.images, "labels": remap[val.labels], "classes": classes,
              "split": (recipe.get("val_size"), recipe.get("split_seed"))}
    return {tta: torch.cat(p) for tta, p in probs.items()}, shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="two or more weight files (.safetensors) of the same classes")
    parser.add_argument("--data", default=os.environ.get("RESNETS_DATA"), help="the image folder (or RESNETS_DATA)")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data DIR or set RESNETS_DATA")
    if len(args.weights) < 2:
        parser.error("give at least two weight files")
    probs, first = {}, None
    dataset = open_dataset(args.data, split="train", min_classes=1)
    for w in args.weights:
        probs[w], shared = held_out_probabilities(w, args.data, dataset)
        first = first or shared
        if shared["classes"] != first["classes"]:
            parser.error(f"{w} has classes {shared['classes']}, {args.weights[0]} {first['classes']}: "
                         "averaging their probabilities needs the same classes in the same order")
        if not torch.equal(shared["images"], first["images"]):
            parser.error(f"{w} holds out other images than {args.weights[0]} (split {shared['split']} vs "
                         f"{first['split']}): an ensemble needs the same held-out split")
    labels = first["labels"]

    def top1(p: torch.Tensor) -> float:
        return float((p.argmax(1) == labels).float().mean())

    names = {w: Path(w).name for w in args.weights}
    if len(set(names.values())) < len(names):  # runs' final.safetensors: name them by their run directory
        names = {w: f"{Path(w).parent.name}/{Path(w).name}" for w in args.weights}
    print(f"{len(labels)} held-out images of {args.data}")
    print("| networks | top-1 | with flip TTA | mirrored images alone | same answer |\n|---|---:|---:|---:|---:|")
    for r in range(1, len(args.weights) + 1):
        for group in itertools.combinations(args.weights, r):
            row = " + ".join(names[w] for w in group)
            plain, flip = (sum(probs[w][tta] for w in group) for tta in ("none", "flip"))
            # flip TTA's probabilities are the mean of the image's and the mirror's: the mirror's are 2 * flip - plain.
            mirror = 2 * flip - plain
            same = float((mirror.argmax(1) == plain.argmax(1)).float().mean())
            print(f"| {row} | {top1(plain):.2%} | {top1(flip):.2%} | {top1(mirror):.2%} | {same:.2%} |")


if __name__ == "__main__":
    main()
