"""Nothing machine-specific in what we ship (issue 18, item 4): no tracked file and no shipped
weights' metadata holds an absolute path of the machine that wrote it, and weights describe their
data by name, classes, images per class and a content fingerprint."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from resnets.data import describe_dataset, open_dataset, portable_recipe
from resnets.pretrained import RECORDS

REPO = Path(__file__).resolve().parents[1]
# Home and work folders of Linux, macOS and Windows machines. Relative paths (`../shared/...`) and
# placeholders (`/path/to/...`) say nothing about a machine and are fine.
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/(work|root|home|Users|mnt|scratch)/[\w.-]"
                          r"|(?<![A-Za-z0-9_])[A-Za-z]:\\(Users|Documents|Windows|[\w -]+\\))")


def machine_paths(text: str) -> list[str]:
    return [text[max(m.start() - 30, 0):m.end() + 30] for m in MACHINE_PATH.finditer(text)]


def test_the_pattern_finds_paths_and_spares_the_rest():
    assert machine_paths('data: "/work/shared/datasets/cifar10-jpeg/train"')
    assert machine_paths("trained in /home/alice/runs") and machine_paths(r"C:\Users\alice\data")
    assert machine_paths("/root/.cache/resnets")
    assert not machine_paths("--data ../shared/datasets/cifar10-jpeg/train, or /path/to/cifar10-jpeg/train")
    assert not machine_paths('f"ready after 120 s:\\n{log}" and "epochs: 2\\n  label"')
    assert not machine_paths("~/.cache/resnets/data; the user's home")


def tracked_files() -> dict[str, Path]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return {name: REPO / name for name in files.decode().split("\0") if name and (REPO / name).is_file()}


def test_no_tracked_file_holds_a_machine_path():
    found = {}
    for name, path in tracked_files().items():
        if name == "tests/test_portable.py":  # this file names them on purpose
            continue
        data = path.read_bytes()
        if name.endswith(".safetensors"):
            with safe_open(str(path), "pt") as handle:
                text = json.dumps(handle.metadata())
        elif b"\0" in data[:8192]:
            continue  # images and other binaries
        else:
            text = data.decode("utf-8", "replace")
        if hits := machine_paths(text):
            found[name] = hits[:3]
    assert not found, f"machine-specific paths: {found}"


def test_no_tracked_file_exceeds_5_mb():
    # The repository's rule: a clone and a wheel stay small; shipped weights fit it (resnet110 as fp16).
    sizes = {name: path.stat().st_size for name, path in tracked_files().items()}
    assert sizes and not {n: s for n, s in sizes.items() if s > 5_000_000}


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.model)
def test_shipped_weights_describe_their_data(record):
    with safe_open(str(record.path), "pt") as handle:
        meta = handle.metadata()
    data = json.loads(meta["recipe"])["data"]
    assert "path" not in data
    dataset = data["dataset"]
    assert dataset["name"] == "cifar10-jpeg/train" and dataset["images"] == 50_000
    assert dataset["classes"] == list(record.classes)
    assert dataset["images_per_class"] == dict.fromkeys(record.classes, 5000)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", dataset["fingerprint"])


def test_the_same_images_in_another_folder_have_the_same_description(real_folder, tmp_path):
    import shutil

    copy = tmp_path / real_folder.parent.name / real_folder.name  # another place, the same last two parts
    shutil.copytree(real_folder, copy)
    here = describe_dataset(open_dataset(real_folder, cache_dir=False), real_folder)
    there = describe_dataset(open_dataset(copy, cache_dir=False), copy)
    assert here == there  # name (the last two folder parts), counts and fingerprint
    cat, dog = sorted((copy / "cat").iterdir())[0], sorted((copy / "dog").iterdir())[0]
    shutil.copyfile(dog, cat)  # one image replaced by another: same names, counts and classes
    changed = describe_dataset(open_dataset(copy, cache_dir=False), copy)
    assert changed["fingerprint"] != here["fingerprint"]
    assert {k: v for k, v in changed.items() if k != "fingerprint"} == {k: v for k, v in here.items() if k != "fingerprint"}
    recipe = portable_recipe({"data": {"path": str(copy), "val_size": 10}, "out_dir": str(tmp_path / "runs"),
                              "finetune": {"weights": str(tmp_path / "w.safetensors")}},
                             open_dataset(copy, cache_dir=False), copy)
    assert not machine_paths(json.dumps(recipe)) and str(tmp_path) not in json.dumps(recipe)
    assert recipe["out_dir"] == "runs" and recipe["finetune"]["weights"] == "w.safetensors"
    assert recipe["data"]["val_size"] == 10 and recipe["data"]["dataset"]["name"].endswith(real_folder.name)
