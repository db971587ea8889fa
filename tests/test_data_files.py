"""Real-world files: odd modes become RGB, bad files are skipped with warnings (or stop strict
runs), ``resnets data verify`` reports them, and the tensor cache notices changes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main as cli_main
from resnets.data import BadImageError, BadImageWarning, DataError, load_image, open_dataset, verify_folder
from resnets.data import cache as data_cache
from test_data_support import CLASSES, real_folder_once


@pytest.fixture(scope="session")
def real_folder(cifar_train_dir, tmp_path_factory):
    return real_folder_once(cifar_train_dir, tmp_path_factory)


def _exif_rotated(path):
    # Stored 8 wide x 4 tall, red left half, blue right half, tagged "rotate 90 CW to display".
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = (255, 0, 0)
    arr[:, 4:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif, quality=95)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cifar_train_dir):
    """A class folder with one real JPEG and every kind of odd or broken file found in the wild."""
    root = tmp_path_factory.mktemp("corpus")
    good, bad = root / "good", root / "bad"
    good.mkdir()
    bad.mkdir()
    real = sorted((cifar_train_dir / "cat").iterdir())[0]
    shutil.copyfile(real, good / "real.jpg")
    base = np.asarray(Image.open(real).convert("RGB"))
    Image.fromarray(base).convert("L").save(good / "gray.png")
    Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE).save(good / "palette.png")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.paste(1, (0, 0, 16, 32))
    pal.save(good / "palette_transparent.png", transparency=0)
    rgba = np.concatenate([base, np.full((32, 32, 1), 255, np.uint8)], axis=2)
    rgba[:, 16:, 3] = 0  # right half transparent
    Image.fromarray(rgba, "RGBA").save(good / "rgba.png")
    Image.fromarray(base).convert("LA").save(good / "la.png")
    Image.fromarray(base).convert("CMYK").save(good / "cmyk.jpg", quality=95)
    sixteen = np.full((32, 32), 65535, np.uint16)
    sixteen[:, :16] = 128 * 257
    Image.fromarray(sixteen).save(good / "deep16.png")
    Image.fromarray(base).convert("1").save(good / "bilevel.png")
    _exif_rotated(good / "rotated.jpg")
    shutil.copyfile(real, good / "no_extension")  # a JPEG without .jpg is still a JPEG
    (good / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # filesystem litter: ignored, not reported
    data = real.read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("labels were checked by hand\n")
    (bad / "fake.png").write_text("<html>404 Not Found</html>")
    shutil.copyfile(real, bad / "fine.jpg")
    return root


def test_odd_modes_become_rgb(corpus):
    g = corpus / "good"
    real = np.asarray(load_image(g / "real.jpg"))
    for name in ("gray.png", "palette.png", "palette_transparent.png", "rgba.png", "la.png", "cmyk.jpg",
                 "deep16.png", "bilevel.png", "rotated.jpg", "no_extension"):
        img = load_image(g / name)
        assert img.mode == "RGB", name
    gray = np.asarray(load_image(g / "gray.png"))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.abs(np.asarray(load_image(g / "palette.png")).astype(int) - real).mean() < 12
    assert np.abs(np.asarray(load_image(g / "cmyk.jpg")).astype(int) - real).mean() < 8
    # Transparent pixels are composited onto white; opaque ones are kept.
    rgba = np.asarray(load_image(g / "rgba.png"))
    assert (rgba[:, 16:] == 255).all() and np.array_equal(rgba[:, :16], real[:, :16])
    pt = np.asarray(load_image(g / "palette_transparent.png"))
    assert (pt[:, :16] == (200, 10, 10)).all() and (pt[:, 16:] == 255).all()
    # 16-bit values are scaled (65535 -> 255, 128*257 -> 128), not clipped to white.
    deep = np.asarray(load_image(g / "deep16.png"))
    assert (deep[:, :16] == 128).all() and (deep[:, 16:] == 255).all()
    # EXIF orientation 6: the stored 8x4 image displays as 4 wide x 8 tall, red on top.
    rot = np.asarray(load_image(g / "rotated.jpg")).astype(int)
    assert rot.shape == (8, 4, 3)
    assert rot[1, 2, 0] > 200 and rot[1, 2, 2] < 60 and rot[6, 2, 2] > 200 and rot[6, 2, 0] < 60


def test_transparent_colour_is_composited_onto_white_like_alpha(tmp_path):
    # PNG tRNS marks one colour transparent (here black, the right half); as for RGBA, LA and
    # palette images, those pixels become white, not the colour they carry.
    gray = Image.new("L", (4, 4), 0)
    gray.paste(200, (0, 0, 2, 4))
    gray.save(tmp_path / "gray.png", transparency=0)
    rgb = Image.new("RGB", (4, 4), (0, 0, 0))
    rgb.paste((200, 10, 10), (0, 0, 2, 4))
    rgb.save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    deep = np.zeros((4, 4), np.uint16)
    deep[:, :2] = 200 * 257
    Image.fromarray(deep).save(tmp_path / "deep16.png", transparency=0)
    for name, left in (("gray.png", (200, 200, 200)), ("rgb.png", (200, 10, 10)), ("deep16.png", (200, 200, 200))):
        assert "transparency" in Image.open(tmp_path / name).info, name
        pixels = np.asarray(load_image(tmp_path / name))
        assert (pixels[:, :2] == left).all() and (pixels[:, 2:] == 255).all(), name


def test_links_that_would_relabel_images_are_not_followed_and_broken_links_reported(real_folder, tmp_path):
    root = tmp_path / "data"
    for name, count in (("cat", 2), ("dog", 3)):
        (root / name).mkdir(parents=True)
        for i, src in enumerate(sorted((real_folder / name).iterdir())[:count]):
            shutil.copyfile(src, root / name / f"{i}.jpg")
    (root / "cat" / "up").symlink_to("..")  # the dataset root: every dog would become a cat
    (root / "dog" / "cats").symlink_to("../cat")  # another class folder
    (root / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    outside = tmp_path / "more_cats"
    outside.mkdir()
    shutil.copyfile(root / "cat" / "0.jpg", outside / "x.jpg")
    (root / "cat" / "more").symlink_to(outside)  # a folder elsewhere is still followed

    report = verify_folder(root, workers=1)
    assert report["classes"] == {"cat": 3, "dog": 3}
    reasons = {b["path"]: b["reason"] for b in report["bad_files"]}
    assert set(reasons) == {str(root / "cat" / "up"), str(root / "dog" / "cats"), str(root / "cat" / "gone.jpg")}
    assert "the dataset folder or a folder above it" in reasons[str(root / "cat" / "up")]
    assert "class folder 'cat'" in reasons[str(root / "dog" / "cats")]
    assert "broken link" in reasons[str(root / "cat" / "gone.jpg")]
    with pytest.warns(BadImageWarning) as record:
        ds = open_dataset(root, cache_dir=tmp_path / "cache")
    assert sum(str(w.message).startswith("skipping") for w in record) == 3
    assert ds.class_counts() == [3, 3] and len(ds.bad_files) == 3


@pytest.mark.parametrize("name, reason", [("truncated.jpg", "truncated"), ("empty.jpg", "empty file"),
                                          ("notes.txt", "not an image"), ("fake.png", "not an image")])
def test_bad_files_raise_naming_the_path(corpus, name, reason):
    path = corpus / "bad" / name
    with pytest.raises(BadImageError, match=reason) as err:
        load_image(path)
    assert err.value.path == str(path) and str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(corpus / "missing.jpg")


def test_bad_files_are_skipped_with_warnings_counted_and_summarised(corpus, tmp_path):
    with pytest.warns(UserWarning) as record:
        ds = open_dataset(corpus, cache_dir=tmp_path, small_images=True)
    messages = [str(w.message) for w in record]
    assert any("1 image(s) not 32x32 were resized" in m for m in messages)
    for name in ("truncated.jpg", "empty.jpg", "notes.txt", "fake.png"):
        assert any(str(corpus / "bad" / name) in m for m in messages), name
    assert any(m.startswith("4 bad file(s) skipped") for m in messages)
    assert len(ds.bad_files) == 4
    assert len(ds) == 11 + 1  # 11 good files (litter ignored) + bad/fine.jpg
    assert ds.class_counts() == [1, 11]  # "bad" sorts before "good"
    assert ds.info.image_size == (32, 32)  # the odd 8x4 image was resized to the common size
    # From the cache the same files are reported again.
    with pytest.warns(BadImageWarning) as record:
        again = open_dataset(corpus, cache_dir=tmp_path, small_images=True)
    assert sum(str(w.message).startswith("4 bad file(s) skipped") for w in record) == 1
    assert torch.equal(again.images, ds.images)


def test_strict_mode_stops_before_training_and_lists_every_bad_file(corpus, tmp_path):
    for small in (True, False):
        with pytest.raises(DataError, match="4 bad file") as err:
            open_dataset(corpus, cache_dir=tmp_path, small_images=small, strict=True)
        for name in ("truncated.jpg", "empty.jpg", "notes.txt", "fake.png"):
            assert str(corpus / "bad" / name) in str(err.value)


def test_verify_report_and_cli(corpus, capsys):
    report = verify_folder(corpus, workers=1)
    assert report["num_images"] == 12 and report["classes"] == {"bad": 1, "good": 11}
    assert {b["path"] for b in report["bad_files"]} == {str(corpus / "bad" / n) for n in
                                                        ("truncated.jpg", "empty.jpg", "notes.txt", "fake.png")}
    assert report["modes"]["I;16"] == 1 and report["modes"]["CMYK"] == 1
    assert report["image_sizes"]["32x32"] == 11 and report["image_sizes"]["8x4"] == 1

    assert cli_main(["data", "verify", str(corpus), "--json"]) == 1  # bad files -> non-zero exit
    assert json.loads(capsys.readouterr().out)["bad_files"] == report["bad_files"]
    assert cli_main(["data", "verify", str(corpus)]) == 1
    out = capsys.readouterr().out
    assert "12 images in 2 classes" in out and "truncated.jpg" in out and "bad files: 4" in out
    assert cli_main(["data", "verify", str(corpus / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_verify_cli_on_real_images(real_folder, capsys):
    assert cli_main(["data", "verify", str(real_folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 300 and report["num_classes"] == 10
    assert report["classes"] == dict.fromkeys(CLASSES, 30) and report["image_sizes"] == {"32x32": 300}
    assert report["bad_files"] == []


@pytest.mark.slow
def test_verify_whole_shared_folder(cifar_train_dir):
    report = verify_folder(cifar_train_dir)
    assert report["num_images"] == 50000 and report["classes"] == dict.fromkeys(CLASSES, 5000)
    assert report["bad_files"] == []


# --- the tensor cache ---------------------------------------------------------------------------


def test_cache_is_used_and_notices_changes(real_folder, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    shutil.copytree(real_folder, folder)
    cache_dir = tmp_path / "cache"
    first = open_dataset(folder, cache_dir=cache_dir)
    files = os.listdir(cache_dir)
    assert len(files) == 1 and files[0].endswith(".safetensors")  # no temp files left behind

    import resnets.data.sources as sources

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(sources, "decode_files", no_decoding)
    warm = open_dataset(folder, cache_dir=cache_dir)
    assert torch.equal(warm.images, first.images) and warm.info == first.info
    monkeypatch.undo()

    # Replace one image's content (a different real image): new key, new pixels.
    target = folder / "cat" / sorted(os.listdir(folder / "cat"))[0]
    donor = folder / "dog" / sorted(os.listdir(folder / "dog"))[0]
    shutil.copyfile(donor, target)
    changed = open_dataset(folder, cache_dir=cache_dir)
    assert len(os.listdir(cache_dir)) == 2
    i = changed.labels.tolist().index(3)
    assert torch.equal(changed.images[i], first.images[first.labels.tolist().index(5)])
    # Removing a file is noticed too.
    os.remove(donor)
    assert len(open_dataset(folder, cache_dir=cache_dir)) == 299


def test_damaged_cache_file_is_rebuilt(real_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    first = open_dataset(real_folder, cache_dir=cache_dir)
    (path,) = cache_dir.iterdir()
    path.write_bytes(path.read_bytes()[:1000])
    again = open_dataset(real_folder, cache_dir=cache_dir)
    assert torch.equal(again.images, first.images)
    assert data_cache.load(path) is not None  # rewritten whole


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    from resnets.weights_io import WriteError, atomic_write

    target = tmp_path / "x.bin"
    atomic_write(target, b"old")

    def fail(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(WriteError, match="could not write .*x.bin: I/O error; the previous file is intact"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


def test_no_warnings_for_a_clean_folder(real_folder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset(real_folder, cache_dir=tmp_path)
