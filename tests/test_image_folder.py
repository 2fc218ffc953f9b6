"""A folder of one's own photos, on real files: the fast JPEG path, the cache, the stable split, the
streaming path, and every kind of bad input the issue lists."""

from __future__ import annotations

import builtins
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import vqvae_lib.data
import vqvae_lib.image_cache as image_cache
import vqvae_lib.image_folder as image_folder
from vqvae_lib import DatasetNotFoundError, ImageFolderDataset, TensorImageDataset, held_out, load_dataset, make_loader
from vqvae_lib.data import _resize_center_crop, _to_mode, decode_many, decode_one


@pytest.fixture(scope="module")
def food_photos(shared_root) -> list[Path]:
    return sorted((shared_root / "food-101-sample" / "food-101" / "images").rglob("*.jpg"))


def _folder(tmp_path: Path, photos: list[Path], n: int, name: str = "photos", size: tuple[int, int] | None = None) -> Path:
    """``n`` real photos copied into a flat folder (resized when ``size`` is given)."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(photos[:n]):
        with Image.open(photo) as img:
            (img.convert("RGB").resize(size) if size else img.convert("RGB")).save(root / f"photo_{i:03d}.jpg", quality=92)
    return root


def _load(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", *args, **kwargs)
    return ds, " | ".join(str(w.message) for w in caught)


# -- fast decoding --------------------------------------------------------------------------------


def _full_decode(path: Path, size: tuple[int, int]) -> torch.Tensor:
    with Image.open(path) as img:
        img = _resize_center_crop(_to_mode(ImageOps.exif_transpose(img), 3), size)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_large_jpegs_decode_at_reduced_size_within_a_grey_level(food_photos, tmp_path, monkeypatch):
    """Phone-sized JPEGs are decoded at 1/8 scale straight from the file, cut exactly where the full
    image would be (odd sizes and an EXIF-rotated portrait included), and differ from a full decode +
    Lanczos by less than 0.5 grey levels on average: benchmarks/folder.py measured 0.13-0.15 (at most
    0.17 per image) on 40 such photos, so 0.5 leaves room for other libjpeg builds, while a crop off by
    one pixel (what computing the crop from the reduced image gave) measured 3-10 levels."""
    from PIL.JpegImagePlugin import JpegImageFile

    drafts = []
    original = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: drafts.append(size) or original(self, mode, size))
    for i, (w, h, orientation) in enumerate([(4031, 3023, 1), (2999, 2001, 6), (3264, 2448, None)]):
        with Image.open(food_photos[i]) as src:
            big = src.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        path = tmp_path / f"big_{i}.jpg"
        big.save(path, quality=92, exif=exif)
        drafts.clear()
        fast = decode_one(path, 3, (64, 64))
        assert drafts and fast.pixels.shape == (3, 64, 64)
        assert fast.upright == ((h, w) if orientation == 6 else (w, h))
        assert (fast.pixels.float() - _full_decode(path, (64, 64)).float()).abs().mean() < 0.5


def test_threads_decode_the_same_pixels_as_one_by_one(food_photos):
    files = food_photos[:40]
    decoded, failures = decode_many([lambda p=p: p for p in files], 3, (32, 32), workers=4)
    assert not failures
    for i, p in enumerate(files):
        assert torch.equal(decoded[i].pixels, decode_one(p, 3, (32, 32)).pixels)


# -- the cache ------------------------------------------------------------------------------------


def test_a_reload_comes_from_the_cache_and_changes_are_decoded_again(food_photos, tmp_path, monkeypatch):
    root = _folder(tmp_path, food_photos, 12)
    decoded_files: list[str] = []
    real = image_folder.decode_many
    monkeypatch.setattr(image_folder, "decode_many",
                        lambda sources, *a, **k: (decoded_files.extend(str(s()) for s in sources), real(sources, *a, **k))[1])
    first, _ = _load("all", root=root, image_size=32)
    assert len(decoded_files) == 12
    cache_files = list((Path(os.environ["VQVAE_CACHE_DIR"]) / "image-folders").glob("photos-folder-32x32-3c-*.pt"))
    assert len(cache_files) == 1 and not any(p.suffix == ".pt" for p in root.iterdir())  # never in the photo folder

    decoded_files.clear()
    again, _ = _load("all", root=root, image_size=32)
    assert decoded_files == [] and torch.equal(first.images, again.images)  # a hit: nothing decoded

    with Image.open(food_photos[20]) as other:  # a changed photo, an added one, a removed one
        other.convert("RGB").save(root / "photo_003.jpg", quality=92)
    os.utime(root / "photo_003.jpg", ns=(0, 10**18))
    (root / "photo_100.jpg").write_bytes((root / "photo_000.jpg").read_bytes())
    (root / "photo_005.jpg").unlink()
    decoded_files.clear()
    changed, _ = _load("all", root=root, image_size=32)
    assert sorted(Path(f).name for f in decoded_files) == ["photo_003.jpg", "photo_100.jpg"]
    assert changed.names == [f"photo_{i:03d}.jpg" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 100)]
    assert torch.equal(changed.images[3], decode_one(root / "photo_003.jpg", 3, (32, 32)).pixels)
    assert torch.equal(changed.images[0], first.images[0])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "code"])
def test_a_corrupt_or_foreign_cache_is_rebuilt_with_a_warning(food_photos, tmp_path, damage):
    root = _folder(tmp_path, food_photos, 6)
    first, _ = _load("all", root=root, image_size=32)
    path = image_cache.cache_path(root, (32, 32), 3, "folder")
    if damage == "garbage":
        path.write_bytes(b"not a cache at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "foreign":  # a well-formed file of another kind: images of the wrong shape
        torch.save({"format": image_cache.CACHE_FORMAT, "names": first.names, "stats": [[0, 0]] * 6,
                    "failed": [""] * 6, "images": torch.zeros(6, 3, 8, 8, dtype=torch.uint8),
                    "upright": torch.zeros(6, 2), "grayscale": torch.zeros(6, dtype=torch.bool)}, path)  # fmt: skip
    else:  # a pickle that would run code when loaded without weights_only
        torch.save({"format": image_cache.CACHE_FORMAT, "payload": os.system}, path)
    again, messages = _load("all", root=root, image_size=32)
    assert "corrupt or not this library's" in messages and "rebuilt" in messages
    assert torch.equal(first.images, again.images)
    assert image_cache.read_cache(path, (32, 32), 3) is not None  # written again, whole


def test_the_cache_can_be_turned_off(food_photos, tmp_path, monkeypatch):
    root = _folder(tmp_path, food_photos, 4)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VQVAE_CACHE_DIR", str(cache))
    monkeypatch.setenv("VQVAE_FOLDER_CACHE", "0")
    _load("all", root=root, image_size=32)
    assert not cache.exists()
    monkeypatch.delenv("VQVAE_FOLDER_CACHE")
    _load("all", root=root, image_size=32)
    assert len(list(cache.rglob("*.pt"))) == 1


# -- the held-out split -----------------------------------------------------------------------------


def test_the_split_is_stable_when_photos_are_added(food_photos, tmp_path):
    """Adding a photo moves no other photo between train and test (by position, every tenth photo, it
    moved a tenth of them), and load_dataset's train and test parts are disjoint and cover the folder."""
    names = [f"holiday/IMG_{i:04d}.jpg" for i in range(200)]
    before = held_out(names)
    assert 10 <= int(before.sum()) <= 30  # about a tenth
    after = held_out(sorted(names + ["holiday/IMG_0000a.jpg"]))
    assert [bool(after[sorted(names + ["holiday/IMG_0000a.jpg"]).index(n)]) for n in names] == before.tolist()

    # macOS stores "é" decomposed (e + combining accent): the same photo must fall on the same side
    import unicodedata

    accented = [f"caf{chr(0xE9)}/IMG_{i:04d}.jpg" for i in range(200)]
    assert held_out([unicodedata.normalize("NFD", n) for n in accented]).tolist() == held_out(accented).tolist()

    root = _folder(tmp_path, food_photos, 30)
    train, _ = _load("train", root=root, image_size=16)
    test, _ = _load("test", root=root, image_size=16)
    everything, _ = _load("all", root=root, image_size=16)
    assert sorted(train.names + test.names) == everything.names and not set(train.names) & set(test.names)
    assert test.names == [n for n, h in zip(everything.names, held_out(everything.names)) if h]


def test_small_folders_keep_a_test_image_and_one_image_says_what_to_do(food_photos, tmp_path):
    assert held_out(["a.jpg", "b.jpg"]).tolist().count(True) == 1
    for n in (2, 3, 5, 19):
        mask = held_out([f"p{i}.jpg" for i in range(n)])
        assert 1 <= int(mask.sum()) < n
    root = _folder(tmp_path, food_photos, 1)
    with pytest.raises(DatasetNotFoundError, match=r"1 usable image\(s\): a train/test split needs at least 2"):
        load_dataset("folder", "train", root=root)
    assert len(load_dataset("folder", "all", root=root, image_size=16)) == 1


# -- in memory or streamed ------------------------------------------------------------------------


def test_a_folder_too_large_for_memory_is_streamed_by_worker_processes(food_photos, tmp_path, monkeypatch):
    root = _folder(tmp_path, food_photos, 24)
    in_memory, _ = _load("all", root=root, image_size=32)
    monkeypatch.setattr(image_folder, "memory_budget", lambda: 24 * 3 * 32 * 32 - 1)  # one byte short
    streamed, messages = _load("all", root=root, image_size=32)
    assert isinstance(streamed, ImageFolderDataset) and isinstance(in_memory, TensorImageDataset)
    assert "need 0.0 GiB decoded, more than" in messages and "decoded batch by batch" in messages
    loader = make_loader(streamed, batch_size=8, seed=0)
    assert loader.num_workers >= 1  # worker processes decode the batches
    reference = make_loader(in_memory, batch_size=8, seed=0)
    assert len(list(loader)) == len(list(reference)) == 3
    for (x, y), (x_ref, y_ref) in zip(loader, reference):
        assert torch.equal((x * 255).round().to(torch.uint8), x_ref.mul(255).round().to(torch.uint8)) and torch.equal(y, y_ref)


# -- bad input ----------------------------------------------------------------------------------------


def test_tiny_images_are_upscaled_with_a_warning(food_photos, tmp_path):
    root = _folder(tmp_path, food_photos, 5, size=(8, 8))
    ds, messages = _load("all", root=root, image_size=32)
    assert ds.image_shape == (3, 32, 32) and "5 of 5 images are smaller than 32x32 (the smallest is 8x8)" in messages
    _, quiet = _load("all", root=_folder(tmp_path, food_photos, 5, "larger", size=(40, 40)), image_size=32)
    assert "smaller than" not in quiet


def test_a_grayscale_folder_is_loaded_with_one_channel_and_says_so(food_photos, tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    for i, photo in enumerate(food_photos[:4]):
        with Image.open(photo) as img:
            gray = img.convert("L")
            (gray.save(root / f"scan_{i}.png") if i % 2 else gray.convert("RGB").save(root / f"scan_{i}.jpg", quality=95))
    ds, messages = _load("all", root=root, image_size=32)
    assert ds.image_shape == (1, 32, 32) and "all 4 images are grayscale, so they are loaded with 1 channel" in messages
    rgb, quiet = _load("all", root=root, image_size=32, channels=3)
    assert rgb.image_shape == (3, 32, 32) and "grayscale" not in quiet
    with Image.open(food_photos[10]) as colour:
        colour.convert("RGB").save(root / "colour.jpg")
    mixed, _ = _load("all", root=root, image_size=32)
    assert mixed.image_shape == (3, 32, 32)


def test_an_unreadable_file_is_named_and_the_rest_loaded(food_photos, tmp_path, monkeypatch):
    root = _folder(tmp_path, food_photos, 4)
    locked = root / "photo_002.jpg"
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # running as root, who reads anything: deny it as the OS would
        real_open = builtins.open
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied", str(f))) if str(f) == str(locked) else real_open(f, *a, **k))  # fmt: skip
    ds, messages = _load("all", root=root, image_size=32)
    assert len(ds) == 3 and "no permission to read" in messages and "photo_002.jpg" in messages
    locked.chmod(0o644)  # fixed as the warning says: neither its size nor its time changes
    monkeypatch.undo()
    fixed, messages = _load("all", root=root, image_size=32)
    assert len(fixed) == 4 and "permission" not in messages  # a failure is never served from the cache


def test_symlink_loops_are_reported_and_not_followed(food_photos, tmp_path):
    root = _folder(tmp_path, food_photos, 3)
    (root / "again").symlink_to(root, target_is_directory=True)  # a loop back to the top
    (root / "self.jpg").symlink_to(root / "self.jpg")  # a link to itself
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # a dangling link
    ds, messages = _load("all", root=root, image_size=16)
    assert len(ds) == 3  # each photo once
    assert "again: a link to a folder already read" in messages
    assert "self.jpg" in messages and "gone.jpg" in messages


def test_file_names_that_are_not_utf8_load_and_print(food_photos, tmp_path):
    root = _folder(tmp_path, food_photos, 3)
    name = os.fsdecode(b"caf\xe9_\xff.jpg")
    try:
        (root / name).write_bytes((root / "photo_000.jpg").read_bytes())
        (root / os.fsdecode(b"broken_\xe9.jpg")).write_bytes(b"not an image")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system accepts only UTF-8 names")
    ds, messages = _load("all", root=root, image_size=16)
    assert len(ds) == 4 and name in ds.names
    assert "broken_\\xe9.jpg" in messages
    messages.encode("utf-8")  # printable: no lone surrogates left in the warning
    assert held_out(ds.names).shape == (4,)


def test_heic_and_avif_photos_load_or_say_what_they_need(food_photos, tmp_path, monkeypatch):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    root = _folder(tmp_path, food_photos, 2)
    with Image.open(food_photos[0]) as photo:
        photo.convert("RGB").save(root / "iphone.heic", quality=90)
        photo.convert("RGB").save(root / "android.avif", quality=90)
        reference = decode_one(root / "photo_000.jpg", 3, (32, 32)).pixels.float()
    ds, _ = _load("all", root=root, image_size=32)
    assert len(ds) == 4
    for name in ("iphone.heic", "android.avif"):  # the same photo: lossy codecs, a few levels apart
        assert (ds.images[ds.names.index(name)].float() - reference).abs().mean() < 6

    # a Python without the plugin: PIL knows no HEIF opener, and the library finds no pillow_heif
    monkeypatch.setattr(vqvae_lib.data, "format_supported", lambda suffix: suffix != ".heic")
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    monkeypatch.setenv("VQVAE_FOLDER_CACHE", "0")  # (the cache holds the photo decoded above)
    ds, messages = _load("all", root=root, image_size=32)
    assert len(ds) == 3 and "HEIC/AVIF photo(s) that this Python cannot decode" in messages and "pillow-heif" in messages


def test_a_folder_that_changes_while_read_says_so_and_loses_nothing(food_photos, tmp_path, monkeypatch):
    root = _folder(tmp_path, food_photos, 8)
    real = image_folder.decode_many

    def decode_while_someone_copies(sources, *args, **kwargs):
        (root / "photo_050.jpg").write_bytes((root / "photo_000.jpg").read_bytes())  # added meanwhile
        (root / "photo_007.jpg").unlink()  # removed before it was read
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(image_folder, "decode_many", decode_while_someone_copies)
    ds, messages = _load("all", root=root, image_size=16)
    assert len(ds) == 7 and "photo_007.jpg" in messages and "disappeared" in messages
    assert "changed while it was read (1 added, 1 removed" in messages and "load again" in messages
    monkeypatch.setattr(image_folder, "decode_many", real)
    again, messages = _load("all", root=root, image_size=16)
    assert len(again) == 8 and "photo_050.jpg" in again.names and "changed" not in messages
