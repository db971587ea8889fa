"""Loader contracts the training engine relies on: order from (seed, epoch), identical batches for
1 vs 2 processes, exact resume mid-epoch, eval shards; and that whole-batch augmentation is right."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from resnets.data import (
    BadImageWarning,
    BatchLoader,
    BatchPlan,
    DatasetInfo,
    FolderLoader,
    TensorImageDataset,
    epoch_permutation,
    make_loader,
    open_dataset,
)


@pytest.fixture(scope="module")
def real(real_folder, tmp_path_factory):
    return open_dataset(real_folder, cache_dir=tmp_path_factory.mktemp("cache"))


def _collect(loader):
    xs, ys = zip(*list(loader))
    return list(xs), list(ys)


# --- the order ----------------------------------------------------------------------------------


def test_order_is_a_function_of_seed_and_epoch():
    p = epoch_permutation(100, seed=1, epoch=2)
    assert torch.equal(p, epoch_permutation(100, 1, 2)) and sorted(p.tolist()) == list(range(100))
    assert not torch.equal(p, epoch_permutation(100, 1, 3)) and not torch.equal(p, epoch_permutation(100, 2, 2))
    plan = BatchPlan(100, 8, train=True, drop_last=True, seed=1, rank=1, world_size=2)
    batches = list(plan.batches(2))
    assert len(batches) == len(plan) == 100 // 16
    assert torch.equal(batches[3].indices, p[3 * 16 + 8:4 * 16])  # global batch i, rank r's slice


def test_last_partial_batch_is_shared_evenly_between_ranks():
    plans = [BatchPlan(10, 3, train=True, drop_last=False, rank=r, world_size=2) for r in range(2)]
    per_rank = [[b.indices.tolist() for b in p.batches(0)] for p in plans]
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]] == [3, 2]
    seen = sum(per_rank[0], []) + sum(per_rank[1], [])
    assert set(seen) == set(range(10))  # everything once, padding repeats the start of the permutation
    assert BatchPlan(10, 3, train=True, drop_last=True).__len__() == 3
    assert BatchPlan(10, 3, train=False, drop_last=False).__len__() == 4


def test_two_ranks_see_exactly_what_one_process_sees(real):
    """Contract 1 and 2: same samples, same order, same augmented pixels."""
    kwargs = dict(train=True, seed=7, cutout=8)
    single = BatchLoader(real, 32, **kwargs)
    ranks = [BatchLoader(real, 16, rank=r, world_size=2, **kwargs) for r in range(2)]
    for loader in [single, *ranks]:
        loader.set_epoch(3)
    x1, y1 = _collect(single)
    parts = [_collect(r) for r in ranks]
    assert len(x1) == len(parts[0][0]) == len(parts[1][0]) == 300 // 32
    for i in range(len(x1)):
        assert torch.equal(torch.cat([parts[0][0][i], parts[1][0][i]]), x1[i])
        assert torch.equal(torch.cat([parts[0][1][i], parts[1][1][i]]), y1[i])


def test_resume_mid_epoch_gives_the_same_batches(real):
    full = BatchLoader(real, 32, train=True, seed=3, cutout=4)
    full.set_epoch(1)
    xs, ys = _collect(full)

    interrupted = BatchLoader(real, 32, train=True, seed=3, cutout=4)
    interrupted.set_epoch(1)
    it = iter(interrupted)
    for _ in range(4):
        next(it)
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batch": 4}

    resumed = BatchLoader(real, 32, train=True, seed=3, cutout=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # an engine calling set_epoch at the top of the resumed epoch keeps the position
    rx, ry = _collect(resumed)
    assert len(rx) == len(xs) - 4
    for a, b in zip(rx, xs[4:]):
        assert torch.equal(a, b)
    assert resumed.state_dict() == {"epoch": 1, "batch": len(full)}


def test_reshuffles_every_epoch_and_set_epoch_replays(real):
    loader = BatchLoader(real, 50, train=True, seed=0)
    e0 = torch.cat(_collect(loader)[1])
    e1 = torch.cat(_collect(loader)[1])  # iterating again moves on to the next epoch
    assert loader.state_dict()["epoch"] == 1 and not torch.equal(e0, e1)
    loader.set_epoch(0)
    assert torch.equal(torch.cat(_collect(loader)[1]), e0)
    other_seed = BatchLoader(real, 50, train=True, seed=1)
    assert not torch.equal(torch.cat(_collect(other_seed)[1]), e0)
    assert sorted(e0.tolist()) == sorted(real.labels.tolist()) or len(e0) == 300 // 50 * 50


def test_eval_keeps_order_without_augmentation_and_shards_disjointly(real):
    ev = BatchLoader(real, 64, train=False)
    xs, ys = _collect(ev)
    assert len(ev) == 5 and [len(y) for y in ys] == [64, 64, 64, 64, 44]  # no drop_last
    assert torch.equal(torch.cat(ys), real.labels)
    mean = torch.tensor(real.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(real.info.std).view(1, 3, 1, 1)
    restored = torch.cat(xs) * std + mean
    assert torch.allclose(restored, real.images.float() / 255, atol=1e-5)  # exactly the images, normalised
    shards = [_collect(BatchLoader(real, 64, train=False, rank=r, world_size=3))[1] for r in range(3)]
    assert torch.equal(torch.cat([torch.cat(s) for s in shards]), real.labels)  # contiguous, disjoint, complete
    assert [sum(len(b) for b in s) for s in shards] == [100, 100, 100]


def test_crop_and_flip_are_real_crops_of_the_padded_image(real):
    loader = BatchLoader(real, 40, train=True, seed=5, normalize=False)
    loader.set_epoch(0)
    perm = epoch_permutation(len(real), 5, 0)
    x, _ = next(iter(loader))
    x = (x * 255).round().to(torch.uint8)  # normalize=False gives pixels / 255
    padded = torch.nn.functional.pad(real.images[perm[:40]], (4, 4, 4, 4))
    flips = 0
    for k in range(40):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(x[k], (lambda c: c.flip(-1) if f else c)(padded[k, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {k} is not a crop (+flip) of its padded source"
        flips += matches[0][2]
    assert 5 < flips < 35  # both flipped and unflipped images occur


def test_cutout_masks_a_square_of_the_mean(real):
    plain = BatchLoader(real, 100, train=True, seed=2)
    cut = BatchLoader(real, 100, train=True, seed=2, cutout=8)
    (xp, _), (xc, _) = next(iter(plain)), next(iter(cut))
    diff = (xp != xc).any(dim=1)  # (B, H, W)
    assert (xc.permute(0, 2, 3, 1)[diff] == 0).all()  # masked pixels are 0 after normalisation: the mean
    areas = diff.sum(dim=(1, 2))
    assert areas.max() <= 64 and (areas > 0).float().mean() > 0.9


def test_output_options(real):
    loader = BatchLoader(real, 16, train=True, channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and x.shape == (16, 3, 32, 32)
    assert len(BatchLoader(real, 64, train=True)) == 4  # drop_last by default when training
    assert len(BatchLoader(real, 64, train=True, drop_last=False)) == 5
    info = DatasetInfo(real.info.classes, (0.0,) * 3, (1.0,) * 3, "override")
    x, _ = next(iter(BatchLoader(real, 8, train=False, info=info)))
    assert torch.allclose(x, real.images[:8].float() / 255)


def test_cpu_threads_are_restored_between_batches(real):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = [torch.get_num_threads() for _ in BatchLoader(real, 64, train=True, cpu_threads=1)]
        assert seen == [2] * 4 and torch.get_num_threads() == 2  # the caller's setting, in and after the loop
        a = torch.cat([x for x, _ in BatchLoader(real, 64, train=True, cpu_threads=1)])
        b = torch.cat([x for x, _ in BatchLoader(real, 64, train=True, cpu_threads=None)])
        assert torch.equal(a, b)
    finally:
        torch.set_num_threads(before)


def test_make_loader_dispatch_and_errors(real, real_folder):
    assert isinstance(make_loader(real, 8, train=True), BatchLoader)
    # Options of the other loader are dropped when neutral, refused when they would matter.
    assert isinstance(make_loader(real, 8, train=True, num_workers=4, mixup_alpha=0.0, image_size=32), BatchLoader)
    with pytest.raises(TypeError, match="mixup_alpha=0.2"):
        make_loader(real, 8, train=True, mixup_alpha=0.2)
    with pytest.raises(TypeError, match="image_size=224"):
        make_loader(real, 8, train=True, image_size=224)
    ds = TensorImageDataset(torch.zeros((4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4), real.info)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(ds, 2, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="exceeds the 4 training images"):
        BatchLoader(ds, 4, train=True, world_size=2)
    assert len(BatchLoader(ds, 4, train=True, world_size=2, drop_last=False)) == 1
    folder = open_dataset(real_folder, small_images=False)
    assert isinstance(make_loader(folder, 8, train=False, num_workers=0, image_size=32, crop_padding=4), FolderLoader)
    with pytest.raises(ValueError, match="random_erasing"):
        make_loader(folder, 8, train=True, num_workers=0, cutout=16)


def test_make_loader_takes_rank_from_the_process_group(real, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    loader = make_loader(real, 16, train=False)
    assert (loader.plan.rank, loader.plan.world_size) == (1, 2)
    assert torch.equal(torch.cat([y for _, y in loader]), real.labels[150:])
    assert make_loader(real, 16, train=False, rank=0, world_size=1).plan.world_size == 1  # explicit wins


# --- the large-image path ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_ds(real_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    for c in ("airplane", "cat", "ship"):
        shutil.copytree(real_folder / c, root / c)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return open_dataset(root, small_images=False)


def test_folder_loader_contracts(folder_ds):
    kw = dict(train=True, seed=4, image_size=24, auto_augment="trivialaugment", random_erasing=0.25)
    single = FolderLoader(folder_ds, 16, num_workers=0, **kw)
    with pytest.warns(UserWarning, match="broken.jpg"):
        x1, y1 = _collect(single)
    broken = [i for i, (p, _) in enumerate(folder_ds.samples) if p.endswith("broken.jpg")][0]
    used = epoch_permutation(len(folder_ds), 4, 0)[:80].tolist()  # 5 full batches of 16 (drop_last)
    assert x1[0].shape[1:] == (3, 24, 24) and sum(map(len, y1)) == 80 - (broken in used)
    assert any("broken.jpg" in b.path for b in single.bad_files)
    assert len(single.bad_files) == 1
    # Workers do not change the result: each sample's randomness is seeded by its place in the order.
    with pytest.warns(UserWarning, match="broken.jpg"):
        x2, _ = _collect(FolderLoader(folder_ds, 16, num_workers=2, **kw))
    assert all(torch.equal(a, b) for a, b in zip(x1, x2)) and len(x1) == len(x2)
    # Two ranks of 8 == one process of 16 (batches containing the broken file are one short).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        ranks = [_collect(FolderLoader(folder_ds, 8, rank=r, world_size=2, num_workers=0, **kw)) for r in range(2)]
    for i in range(len(x1)):
        assert torch.equal(torch.cat([ranks[0][0][i], ranks[1][0][i]]), x1[i])
        assert torch.equal(torch.cat([ranks[0][1][i], ranks[1][1][i]]), y1[i])
    # Resume mid-epoch.
    resumed = FolderLoader(folder_ds, 16, num_workers=0, **kw)
    resumed.load_state_dict({"epoch": 0, "batch": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        rx, _ = _collect(resumed)
    assert all(torch.equal(a, b) for a, b in zip(rx, x1[3:])) and len(rx) == len(x1) - 3


def test_folder_loader_eval_and_mixup(folder_ds):
    ev = FolderLoader(folder_ds, 32, train=False, num_workers=0, image_size=32)
    with pytest.warns(UserWarning, match="broken.jpg"):
        xs, ys = _collect(ev)
    assert torch.cat(ys).tolist() == sorted(torch.cat(ys).tolist())  # in order
    assert sum(len(y) for y in ys) == len(folder_ds) - 1
    mix = FolderLoader(folder_ds, 16, train=True, num_workers=0, image_size=32, mixup_alpha=0.2, cutmix_alpha=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        x, y = next(iter(mix))
    assert y.shape == (len(x), 3) and torch.allclose(y.sum(1), torch.ones(len(x)))


# --- real processes ---------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, folder: str, cache_dir: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ds = open_dataset(folder, cache_dir=cache_dir)
        loader = make_loader(ds, 16, train=True, seed=11, cutout=4)  # rank and world size from the group
        loader.set_epoch(2)
        xs, ys = zip(*list(loader))
        torch.save({"x": torch.stack(xs), "y": torch.stack(ys)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_real_processes_match_one(real, real_folder, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache_dir = tmp_path / "cache"
    open_dataset(real_folder, cache_dir=cache_dir)  # build the cache once, as rank 0 of a launcher would
    mp.spawn(_ddp_worker, args=(2, port, str(real_folder), str(cache_dir), str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = BatchLoader(real, 32, train=True, seed=11, cutout=4)
    single.set_epoch(2)
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([parts[0]["x"][i], parts[1]["x"][i]]), x)
        assert torch.equal(torch.cat([parts[0]["y"][i], parts[1]["y"][i]]), y)


@pytest.mark.slow
def test_paper_split_on_the_whole_shared_folder(cifar_train_dir, tmp_path):
    from resnets.data import split_train_val

    ds = open_dataset(cifar_train_dir, cache_dir=tmp_path)
    assert len(ds) == 50000 and ds.class_counts() == [5000] * 10
    train, val = split_train_val(ds, 5000, seed=0)
    assert len(train) == 45000 and val.class_counts() == [500] * 10
    # CIFAR-10's published statistics; the JPEG q75 re-encode moves them by a little.
    assert max(abs(a - b) for a, b in zip(train.info.mean, (0.4914, 0.4822, 0.4465))) < 0.005
    assert max(abs(a - b) for a, b in zip(train.info.std, (0.2470, 0.2435, 0.2616))) < 0.005
    loader = BatchLoader(train, 500, train=True)
    assert sum(len(y) for _, y in loader) == 45000
