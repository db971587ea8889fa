"""CIFAR archives (real format, safe unpickling), image folders, class maps, splits, statistics."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from resnets.data import (
    DataError,
    DatasetInfo,
    TensorImageDataset,
    UnsafePickleError,
    compute_normalization,
    open_dataset,
    read_cifar,
    split_train_val,
    write_cifar_archive,
)
from resnets.data.cifar import read_pickle
from test_data_support import CLASSES, copy_real_images, decode_folder

# --- CIFAR archives ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_pixels(real_folder):
    return decode_folder(real_folder)


def test_cifar10_archive_from_real_images_round_trips(tmp_path, real_pixels):
    images, labels = real_pixels
    train, test = (images[:250], labels[:250]), (images[250:], labels[250:])
    folder = write_cifar_archive(tmp_path, "cifar10", train, test, CLASSES)
    assert sorted(os.listdir(folder)) == ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3",
                                          "data_batch_4", "data_batch_5", "test_batch"]
    # The files are what CIFAR's own pickles are: Python-2 protocol 2 naming numpy.core.
    raw = (folder / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"numpy.core.multiarray\n_reconstruct" in raw
    # ...and torchvision's reader (plain pickle) agrees with ours on the content.
    with open(folder / "data_batch_1", "rb") as fh:
        theirs = pickle.load(fh, encoding="latin1")
    assert theirs["data"].dtype == np.uint8 and theirs["data"].shape == (50, 3072)

    for path in (tmp_path, folder):  # the archive folder or its parent
        ds = open_dataset(path)
        assert isinstance(ds, TensorImageDataset)
        assert torch.equal(ds.images, images[:250]) and torch.equal(ds.labels, labels[:250])
        assert ds.info.classes == CLASSES and ds.info.image_size == (32, 32)
    test_ds = open_dataset(tmp_path, split="test")
    assert torch.equal(test_ds.images, images[250:])
    # Normalisation of the test split comes from the training images, never from the test ones.
    assert test_ds.info.mean == compute_normalization(images[:250])[0]


def test_verify_reads_cifar_archives(tmp_path, real_pixels):
    from resnets.data import verify_folder

    images, labels = real_pixels
    write_cifar_archive(tmp_path, "cifar10", (images[:200], labels[:200]), (images[200:], labels[200:]), CLASSES)
    report = verify_folder(tmp_path)
    assert report["format"] == "cifar10" and report["num_images"] == 200 and report["num_classes"] == 10
    assert report["splits"]["test"]["images"] == 100 and report["bad_files"] == []
    assert report["classes"] == dict(zip(CLASSES, labels[:200].bincount(minlength=10).tolist()))


def test_cifar100_archive_fine_and_coarse_labels(tmp_path, real_pixels):
    images, labels = real_pixels
    coarse_names = ["vehicle", "animal"]
    is_animal = torch.tensor([c in range(2, 8) for c in range(10)])
    coarse = (is_animal[labels[:200]].long(), is_animal[labels[200:]].long(), coarse_names)
    write_cifar_archive(tmp_path, "cifar100", (images[:200], labels[:200]), (images[200:], labels[200:]),
                        CLASSES, coarse=coarse)
    fine = open_dataset(tmp_path / "cifar-100-python")
    assert fine.info.classes == CLASSES and torch.equal(fine.labels, labels[:200])
    x, y, names = read_cifar(tmp_path / "cifar-100-python", "cifar100", "test", label_set="coarse")
    assert names == coarse_names and torch.equal(y, coarse[1]) and torch.equal(x, images[200:])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_unpickler_refuses_foreign_globals_and_names_the_file(tmp_path):
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"{evil}.*(posix|os)\.system"):
        read_pickle(evil)
    # Even a harmless-looking global outside the allow-list is refused.
    (tmp_path / "other").write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(UnsafePickleError, match="builtins.print"):
        read_pickle(tmp_path / "other")


def test_modern_numpy_pickles_are_accepted(tmp_path):
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps({"data": arr, "labels": [1, 2]}, protocol=protocol))
        assert np.array_equal(read_pickle(path)["data"], arr)


def test_malformed_cifar_files_give_errors_naming_them(tmp_path, real_pixels):
    images, labels = real_pixels
    folder = write_cifar_archive(tmp_path, "cifar10", (images[:50], labels[:50]), (images[:10], labels[:10]), CLASSES)
    bad = folder / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2))
    with pytest.raises(ValueError, match=rf"{bad}.*N x 3072"):
        open_dataset(tmp_path)
    bad.write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated
    with pytest.raises(ValueError, match=rf"{bad}.*not a readable CIFAR pickle"):
        open_dataset(tmp_path)


def test_download_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    target = tmp_path / "cifar10"
    with pytest.raises(FileNotFoundError) as err:
        open_dataset(target, download=True)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(target / "cifar-10-batches-py") in message
    with pytest.raises(ValueError, match="name the folder"):
        open_dataset(tmp_path / "mydata", download=True)
    with pytest.raises(FileNotFoundError, match="--download"):
        open_dataset(tmp_path / "cifar100")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="extract it"):
        open_dataset(tmp_path / "cifar-10-python.tar.gz")


# --- image folders ----------------------------------------------------------------------------


def test_image_folder_small_images_match_plain_pillow(real_folder, real_pixels, tmp_path):
    ds = open_dataset(real_folder, cache_dir=tmp_path)
    assert isinstance(ds, TensorImageDataset)
    assert ds.info.classes == CLASSES and ds.info.image_size == (32, 32)
    assert torch.equal(ds.images, real_pixels[0]) and torch.equal(ds.labels, real_pixels[1])
    assert ds.class_counts() == [30] * 10


def _numbered_folder(root, names):
    for name in names:
        (root / name).mkdir(parents=True)
        # A 1x1 PNG per class: enough to be a valid image folder.
        from PIL import Image

        Image.new("RGB", (8, 8), (int(name) if name.isdigit() else 7, 0, 0)).save(root / name / "a.png")
    return root


def test_class_order_alphabetical_natural_and_class_map_files(tmp_path):
    root = _numbered_folder(tmp_path / "f", ["1", "2", "10"])
    with pytest.warns(UserWarning, match="class_map='natural'"):
        assert open_dataset(root, cache_dir=False).info.classes == ["1", "10", "2"]
    assert open_dataset(root, cache_dir=False, class_map="natural").info.classes == ["1", "2", "10"]
    (tmp_path / "map.json").write_text(json.dumps({"10": 0, "1": 1, "2": 2}))
    ds = open_dataset(root, cache_dir=False, class_map=tmp_path / "map.json")
    assert ds.info.classes == ["10", "1", "2"]
    assert ds.images[ds.labels == 0, 0, 0, 0].tolist() == [10]  # folder "10" really got label 0
    (tmp_path / "map.txt").write_text("# label order\n2\n1\n10\n")
    assert open_dataset(root, cache_dir=False, class_map=str(tmp_path / "map.txt")).info.classes == ["2", "1", "10"]
    with pytest.raises(ValueError, match="do not exist.*'3'"):
        open_dataset(root, cache_dir=False, class_map=["1", "2", "3"])
    (tmp_path / "gap.json").write_text(json.dumps({"1": 0, "2": 2}))
    with pytest.raises(ValueError, match="without gaps"):
        open_dataset(root, cache_dir=False, class_map=tmp_path / "gap.json")


def test_split_folders_take_statistics_from_train(real_folder, cifar_train_dir, tmp_path):
    root = tmp_path / "imagenet-style"
    copy_real_images(cifar_train_dir, root / "train", 12)
    copy_real_images(cifar_train_dir, root / "val", 4, offset=100)
    train = open_dataset(root, cache_dir=tmp_path / "c")
    val = open_dataset(root, split="val", cache_dir=tmp_path / "c")
    assert len(train) == 120 and len(val) == 40
    assert val.info.mean == train.info.mean and val.info.std == train.info.std
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        open_dataset(root, split="test", cache_dir=tmp_path / "c")


def test_large_image_path_is_a_folder_dataset(real_folder):
    ds = open_dataset(real_folder, small_images=False)
    assert type(ds).__name__ == "FolderDataset" and len(ds) == 300
    img, label = ds[31]
    assert img.size == (32, 32) and label == 1
    sub = ds.subset([0, 299])
    assert sub.labels.tolist() == [0, 9]


# --- split and statistics ---------------------------------------------------------------------


def _toy(n_per_class=(50, 30, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = torch.randint(0, 256, (len(labels), 3, 4, 4), dtype=torch.uint8, generator=g)
    info = DatasetInfo([f"c{i}" for i in range(len(n_per_class))], (0.5,) * 3, (0.25,) * 3, "toy", (4, 4))
    return TensorImageDataset(images, labels, info)


def test_split_is_stratified_exact_and_seeded():
    ds = _toy()
    train, val = split_train_val(ds, 10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert val.labels.bincount().tolist() == [5, 3, 2]
    assert torch.equal(split_train_val(ds, 10, seed=3)[1].images, val.images)
    assert not torch.equal(split_train_val(ds, 10, seed=4)[1].images, val.images)
    # Disjoint and complete: every image is in exactly one part.
    together = torch.cat([train.images, val.images]).flatten(1)
    assert torch.unique(together, dim=0).shape[0] == torch.unique(ds.images.flatten(1), dim=0).shape[0] == 100
    # Statistics come from the training part only, and validation uses them.
    assert train.info.mean == compute_normalization(train.images)[0] != ds.info.mean
    assert val.info == train.info
    # Fractions, and remainders distributed so quotas add up.
    assert len(split_train_val(ds, 0.25)[1]) == 25
    assert split_train_val(_toy((7, 7, 7)), 4)[1].labels.bincount().tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="at least one training image"):
        split_train_val(ds, 100)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_train_val(ds, 1.5)


def test_paper_split_45k_5k_on_real_labels(cifar_train_dir, tmp_path):
    # Labels only (no decoding): a stand-in with the real class layout of CIFAR-10, 5,000 per class.
    info = DatasetInfo(CLASSES, (0.5,) * 3, (0.25,) * 3, "labels")
    ds = TensorImageDataset(torch.zeros((50000, 3, 1, 1), dtype=torch.uint8), torch.arange(50000) // 5000, info)
    train, val = split_train_val(ds, 5000, seed=0)
    assert len(train) == 45000 and val.labels.bincount().tolist() == [500] * 10


def test_normalization_matches_float64_reference_and_known_cifar_values(real_pixels):
    images = real_pixels[0]
    mean, std = compute_normalization(images)
    x = images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-6)
    assert np.allclose(std, x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).numpy(), atol=1e-6)
    # CIFAR-10's published statistics (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616): 300 JPEGs land near.
    assert np.allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.04)
    assert np.allclose(std, (0.2470, 0.2435, 0.2616), atol=0.03)
    with pytest.raises(ValueError, match="uint8"):
        compute_normalization(images.float())


def test_dataset_info_json_round_trip():
    info = DatasetInfo(CLASSES, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), "cifar10", (32, 32))
    back = DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info and isinstance(back.mean, tuple) and back.image_size == (32, 32)
    with pytest.raises(ValueError, match="missing"):
        DatasetInfo.from_dict({"classes": []})


def test_strict_mode_and_empty_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"x\.jpg: empty file"):
        open_dataset(tmp_path, strict=True, cache_dir=False, small_images=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no decodable images"):
            open_dataset(tmp_path, cache_dir=False, small_images=True)
    with pytest.raises(ValueError, match="no class folders"):
        open_dataset(tmp_path / "a", cache_dir=False)
