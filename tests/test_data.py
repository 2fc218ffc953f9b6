"""Loaders on real files in their real formats, and clear errors for bad or missing data."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import socket
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae_lib import DatasetNotFoundError, TensorImageDataset, data_root, load_dataset, make_loader
import vqvae_lib.sources
from vqvae_lib.sources import CIFAR10_CLASSES


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the internet fails at once, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# -- data root ------------------------------------------------------------------------------


def test_data_root_comes_from_argument_then_environment_then_package(monkeypatch, tmp_path):
    monkeypatch.delenv("VQVAE_DATA_ROOT", raising=False)
    repo = Path(__file__).resolve().parent.parent
    assert data_root() == repo / "data"
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert data_root() == repo / "data"
    monkeypatch.setenv("VQVAE_DATA_ROOT", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"


# -- MNIST ------------------------------------------------------------------------------------


def _read_idx_images(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert int.from_bytes(raw[:4], "big") == 2051
    n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)


def test_mnist_reads_the_idx_files(real_root):
    train = load_dataset("mnist", "train", root=real_root)
    test = load_dataset("mnist", "test", root=real_root)
    assert isinstance(train, TensorImageDataset)
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.image_shape == (1, 28, 28)
    idx = _read_idx_images(real_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    assert np.array_equal(test.images[:, 0].numpy(), idx)
    counts = torch.bincount(train.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    x, y = test[0]
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0 and y == 7


def test_mnist_from_gzipped_files_only(real_root, tmp_path, no_network):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (real_root / "MNIST" / "raw").glob("t10k-*.gz"):
        shutil.copy(f, raw / f.name)
    for f in (real_root / "MNIST" / "raw").glob("train-*.gz"):
        shutil.copy(f, raw / f.name)
    test = load_dataset("mnist", "test", root=tmp_path)
    assert len(test) == 10_000


def test_mnist_missing_without_network_says_where_to_put_it(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", "train", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg and "VQVAE_DATA_ROOT" in msg


def test_resize_and_channel_conversion(real_root):
    ds = load_dataset("mnist", "test", root=real_root, image_size=32, channels=3)
    assert ds.image_shape == (3, 32, 32)
    x, _ = ds[0]
    torch.testing.assert_close(x[0], x[1])


# -- CIFAR-10 ----------------------------------------------------------------------------------


def _write_cifar_pickles(folder: Path, x: np.ndarray, y: np.ndarray, n_train_batches: int = 5) -> None:
    """CIFAR-10's python format: pickled dicts of 'data' (N, 3072) R, G, B planes and 'labels'."""
    folder.mkdir(parents=True)

    def dump(name: str, xs: np.ndarray, ys: np.ndarray) -> None:
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in ys],
            "data": xs.transpose(0, 3, 1, 2).reshape(len(xs), -1),
            "filenames": [f"{i}.png" for i in range(len(xs))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for i, (xs, ys) in enumerate(zip(np.array_split(x, n_train_batches), np.array_split(y, n_train_batches)), 1):
        dump(f"data_batch_{i}", xs, ys)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f, protocol=2)


def test_cifar10_reads_the_python_pickles(shared_root, tmp_path, monkeypatch):
    subset = np.load(shared_root / "cifar10-exact-subset" / "cifar10_exact_subset.npz")
    _write_cifar_pickles(tmp_path / "cifar-10-batches-py", subset["x_train"], subset["y_train"])
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        data = subset["x_test"].transpose(0, 3, 1, 2).reshape(1000, -1)
        pickle.dump({"labels": subset["y_test"].tolist(), "data": data}, f, protocol=2)
    # the reader opens only files with the published md5s; these real pixels stand in for them
    # (the published files are not among the CI datasets)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (tmp_path / "cifar-10-batches-py").iterdir()}
    monkeypatch.setattr(vqvae_lib.sources, "_cifar_md5s", lambda: md5s)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert len(train) == 2000 and len(test) == 1000 and train.image_shape == (3, 32, 32)
    assert np.array_equal(train.images.permute(0, 2, 3, 1).numpy(), subset["x_train"])
    assert np.array_equal(test.labels.numpy(), subset["y_test"].astype(np.int64))


def test_cifar10_image_export_from_zip_and_folder_keeps_class_order(shared_root, tmp_path):
    zipped = tmp_path / "zipped"
    (zipped / "cifar10-images").mkdir(parents=True)
    shutil.copy(shared_root / "cifar10-images" / "cifar10-test-jpg.zip", zipped / "cifar10-images")
    (zipped / "cifar10-images").chmod(0o555)
    test = load_dataset("cifar10", "test", root=zipped)  # read from the zip, nothing written
    assert sorted(p.name for p in (zipped / "cifar10-images").iterdir()) == ["cifar10-test-jpg.zip"]
    assert len(test) == 10_000 and test.image_shape == (3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10

    unzipped = tmp_path / "unzipped" / "cifar10-images"
    with zipfile.ZipFile(shared_root / "cifar10-images" / "cifar10-test-jpg.zip") as zf:
        zf.extractall(unzipped)
    from_folder = load_dataset("cifar10", "test", root=unzipped.parent)
    assert torch.equal(from_folder.images, test.images) and torch.equal(from_folder.labels, test.labels)
    # label k holds the images from the folder of CIFAR-10's k-th class, in file order
    first_ship = Image.open(unzipped / "test" / "ship" / "0000.jpg").convert("RGB")
    pos = int((test.labels == CIFAR10_CLASSES.index("ship")).nonzero()[0])
    assert np.array_equal(test.images[pos].permute(1, 2, 0).numpy(), np.asarray(first_ship))


def test_cifar10_export_with_unknown_classes_is_refused(tmp_path):
    for cls in ("airplane", "dragons"):
        (tmp_path / "cifar10-images" / "test" / cls).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="dragons"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_cifar10_missing_without_network_says_where_to_put_it(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", "train", root=tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "cifar10-images/train/<class>" in msg and str(tmp_path) in msg


def test_cifar10_exact_subset(shared_root):
    test = load_dataset("cifar10-exact", "test", root=shared_root)
    subset = np.load(shared_root / "cifar10-exact-subset" / "cifar10_exact_subset.npz")
    assert len(test) == 1000
    assert np.array_equal(test.images.permute(0, 2, 3, 1).numpy(), subset["x_test"])


# -- Food-101 ----------------------------------------------------------------------------------


def test_food101_layout(shared_root):
    train = load_dataset("food101", "train", root=shared_root / "food-101-sample", image_size=48)
    test = load_dataset("food101", "test", root=shared_root, image_size=48, in_memory=True)  # finds food-101-sample
    assert len(train) == 600 and len(test) == 200
    x, y = train[0]
    assert x.shape == (3, 48, 48) and 0 <= y < 10
    assert isinstance(test, TensorImageDataset) and test.image_shape == (3, 48, 48)
    assert torch.bincount(test.labels).tolist() == [20] * 10
    assert test.images.float().std() > 20  # real photos, not blank frames


def test_food101_is_the_same_800_photos_in_a_full_download(shared_root, tmp_path):
    """A learner with all of Food-101 gets notebook 7's 800 photos by default (never 101,000 to decode), in
    the sample's order and classes; "food101-full" gives everything there."""
    import json
    import os

    sample = shared_root / "food-101-sample" / "food-101"
    full = tmp_path / "food-101"
    (full / "meta").mkdir(parents=True)
    os.symlink(sample / "images", tmp_path / "sample_images")
    meta = {}
    for split in ("train", "test"):
        chosen = json.loads((sample / "meta" / f"{split}.json").read_text())
        # a full download: an 11th class sorted first, and more photos of a sampled class listed before them
        extra_of_class = [f"apple_pie/extra_{split}_{i}" for i in range(3)]
        meta[split] = {"aaa_extra": [f"aaa_extra/{split}_{i}" for i in range(2)],
                       **{c: (extra_of_class if c == "apple_pie" else []) + names for c, names in chosen.items()}}
        (full / "meta" / f"{split}.json").write_text(json.dumps(meta[split]))
    first = sorted((sample / "images" / "apple_pie").glob("*.jpg"))[0]
    for names in meta.values():
        for name in names["aaa_extra"] + names["apple_pie"]:
            (full / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            if not (full / "images" / f"{name}.jpg").exists():
                os.symlink(first if "extra" in name else sample / "images" / f"{name}.jpg", full / "images" / f"{name}.jpg")
    for c in meta["train"]:
        if c not in ("aaa_extra", "apple_pie"):
            os.symlink(sample / "images" / c, full / "images" / c)

    picked = load_dataset("food101", "train", root=tmp_path, image_size=16, cache=False, in_memory=True)
    alone = load_dataset("food101", "train", root=shared_root / "food-101-sample", image_size=16, cache=False, in_memory=True)
    assert len(picked) == 600 and torch.equal(picked.images, alone.images) and torch.equal(picked.labels, alone.labels)
    everything = load_dataset("food101-full", "test", root=tmp_path, image_size=16, cache=False, in_memory=True)
    assert len(everything) == 200 + 2 + 3


def test_food101_missing_without_network(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError, match="meta/train.txt"):
        load_dataset("food101", "train", root=tmp_path)


# -- a user's own folder -----------------------------------------------------------------------


@pytest.fixture
def mixed_folder(shared_root, tmp_path) -> Path:
    """Real photos saved in every common mode and size, two classes, plus a corrupt and a stray file."""
    photos = sorted((shared_root / "food-101-sample" / "food-101" / "images").rglob("*.jpg"))[:6]
    root = tmp_path / "my_images"
    (root / "cakes").mkdir(parents=True)
    (root / "soups").mkdir()
    imgs = [Image.open(p).convert("RGB") for p in photos]
    imgs[0].convert("L").resize((300, 200)).save(root / "cakes" / "gray.png")
    imgs[1].resize((90, 120)).save(root / "cakes" / "rgb.jpg")
    rgba = imgs[2].convert("RGBA").resize((64, 64))
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 64, 16))  # the top quarter fully transparent
    rgba.putalpha(alpha)
    rgba.save(root / "cakes" / "rgba.png")
    imgs[3].convert("P", palette=Image.Palette.ADAPTIVE).save(root / "soups" / "palette.png")
    gray16 = np.asarray(imgs[4].convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(root / "soups" / "gray16.png")
    imgs[5].convert("LA").save(root / "soups" / "gray_alpha.png")
    (root / "soups" / "broken.jpg").write_bytes(b"this is not a jpeg")
    jpg = (root / "cakes" / "rgb.jpg").read_bytes()
    (root / "soups" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_with_mixed_modes_and_sizes(mixed_folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", "all", root=mixed_folder, image_size=32)
    messages = " ".join(str(w.message) for w in caught)
    assert "notes.txt" in messages  # ignored: not an image
    assert "broken.jpg" in messages  # skipped: unreadable
    assert "truncated.jpg" in messages  # skipped: header fine, pixels missing
    assert isinstance(ds, TensorImageDataset)
    assert len(ds) == 6 and ds.image_shape == (3, 32, 32)
    assert sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # transparency is composited onto white: the transparent top of rgba.png is white
    names = sorted(p.relative_to(mixed_folder).as_posix() for p in mixed_folder.rglob("*.*") if p.suffix in (".png", ".jpg"))
    kept = [n for n in names if "broken" not in n and "truncated" not in n]
    rgba_idx = kept.index("cakes/rgba.png")
    assert ds.images[rgba_idx, :, :6, :].min() >= 250  # (resampling rounds a few to 254)
    assert ds.images[rgba_idx, :, 12:, :].float().mean() < 220  # the opaque rest is the photo
    gray_idx = kept.index("cakes/gray.png")
    assert torch.equal(ds.images[gray_idx, 0], ds.images[gray_idx, 1])
    assert ds.images[kept.index("soups/gray16.png")].float().std() > 10  # 16-bit scaled, not clipped white


def test_folder_as_grayscale_and_lazy(mixed_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = load_dataset("folder", "all", root=mixed_folder / "cakes", image_size=(24, 16), channels=1, in_memory=False)
    x, y = lazy[0]
    assert x.shape == (1, 24, 16) and y == -1  # a flat folder has no classes
    batch, _ = next(iter(make_loader(lazy, batch_size=3)))
    assert batch.shape == (3, 1, 24, 16)


def test_one_rule_for_bad_files_whatever_the_source(shared_root, tmp_path):
    """A file that cannot be decoded is left out with one warning naming it, in a folder, in Food-101 and
    in a CIFAR-10 export alike (Food-101 used to raise and folders to skip); only an item decoded on
    its own cannot be left out of a batch, and raises DatasetFileError naming the file."""
    from vqvae_lib import DatasetFileError, ImageFolderDataset

    food = tmp_path / "food"
    sample = shared_root / "food-101-sample" / "food-101"
    (food / "food-101").mkdir(parents=True)
    (food / "food-101" / "meta").symlink_to(sample / "meta")
    images = food / "food-101" / "images"
    for class_dir in (sample / "images").iterdir():
        (images / class_dir.name).mkdir(parents=True)
        for photo in class_dir.iterdir():
            (images / class_dir.name / photo.name).symlink_to(photo)
    test_files = [line.strip() for line in (sample / "meta" / "test.txt").read_text().split()]
    broken = images / f"{test_files[3]}.jpg"
    broken.unlink()
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*" + test_files[3]):
        test = load_dataset("food101", "test", root=food, image_size=32)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*" + test_files[3]):
        lazy = load_dataset("food101", "test", root=food, image_size=32, in_memory=False)  # headers checked first
    assert len(test) == len(lazy) == 199 and test.labels.tolist() == lazy.labels
    assert torch.equal(torch.stack([lazy[i][0] for i in (0, 198)]), torch.stack([test[i][0] for i in (0, 198)]))
    one = ImageFolderDataset.from_files(images, [broken], [0], ["apple_pie"], image_size=32)
    with pytest.raises(DatasetFileError, match=test_files[3]):
        one[0]  # decoded on its own, in a batch already drawn: it cannot be left out

    export = tmp_path / "cifar10-images" / "test"
    for cls in ("cat", "dog"):
        (export / cls).mkdir(parents=True)
        for i, photo in enumerate(sorted((sample / "images").rglob("*.jpg"))[:3]):
            Image.open(photo).resize((32, 32)).save(export / cls / f"{i}.jpg")
    (export / "dog" / "1.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*dog/1.jpg"):
        cifar = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert len(cifar) == 5 and cifar.labels.tolist() == [3, 3, 3, 5, 5]


def test_empty_or_imageless_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no readable images"):
        load_dataset("folder", root=tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    (tmp_path / "text" / "b.png").write_bytes(b"\x89PNG garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DatasetNotFoundError, match="no readable images"):
            load_dataset("folder", root=tmp_path / "text")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("folder", root=tmp_path / "nope")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


# -- batches ---------------------------------------------------------------------------------


def _numbered(n: int) -> TensorImageDataset:
    return TensorImageDataset(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n))


def test_batch_loader_epochs_are_reproducible_and_resumable():
    ds = _numbered(100)
    loader = make_loader(ds, batch_size=10, seed=3)
    epoch0 = [y.tolist() for _, y in loader]
    assert sorted(sum(epoch0, [])) == list(range(100))  # each image once per epoch
    loader.set_epoch(1)
    epoch1 = [y.tolist() for _, y in loader]
    assert epoch1 != epoch0
    loader.set_epoch(1, start_batch=4)
    assert [y.tolist() for _, y in loader] == epoch1[4:]
    loader.set_epoch(0)
    assert [y.tolist() for _, y in loader] == epoch0


def test_batch_loader_shards_are_disjoint():
    ds = _numbered(64)
    shards = [sum((y.tolist() for _, y in make_loader(ds, 8, seed=1, rank=r, world_size=2)), []) for r in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert len(shards[0]) == len(shards[1]) == 32
    # together the ranks see exactly the single-process batches of 2 x 8, in the same order
    single = [y.tolist() for _, y in make_loader(ds, 16, seed=1)]
    per_rank = [[y.tolist() for _, y in make_loader(ds, 8, seed=1, rank=r, world_size=2)] for r in range(2)]
    assert [a + b for a, b in zip(*per_rank)] == single


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_numbered(5), batch_size=8)
    assert sum(len(y) for _, y in make_loader(_numbered(5), batch_size=8, shuffle=False)) == 5


def test_a_plain_loop_over_the_loader_reshuffles_every_epoch():
    # the by-hand training loop of notebook 5 iterates the loader epoch after epoch without set_epoch:
    # each pass must be a new order (as a DataLoader's is), and a resumable run must still match
    from vqvae_lib import TensorImageDataset, make_loader

    data = TensorImageDataset(torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 1, 4, 4).contiguous(), torch.arange(64))
    loader = make_loader(data, 8, seed=3)
    first, second = ([int(y[0]) for _, y in loader] for _ in range(2))
    assert first != second, "two passes of a plain for loop drew the same order"
    again = make_loader(data, 8, seed=3)
    stream = again.batches_from(0)
    assert [int(next(stream)[1][0]) for _ in range(16)] == first + second, "batches_from must match a plain loop"
    # the classic bug keeps drawing the first batch of epoch 0: the behaviour notebook 5's exercise shows
    assert len({tuple(next(iter(loader))[1].tolist()) for _ in range(5)}) == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_load_upright_whatever_their_exif_orientation(tmp_path, orientation):
    # what a viewer shows: a 60 x 40 picture, black with a white square in its top-left corner. A phone
    # stores it turned and/or mirrored and says how in EXIF tag 0x0112; the stored pixels below follow
    # the EXIF definition of each value (6: the stored image must be turned 90 degrees clockwise to view)
    shown = np.zeros((40, 60, 3), np.uint8)
    shown[:16, :16] = 255
    stored = {
        1: shown, 2: shown[:, ::-1], 3: shown[::-1, ::-1], 4: shown[::-1],
        5: shown.transpose(1, 0, 2), 6: np.rot90(shown, 1), 7: np.rot90(shown, 2).transpose(1, 0, 2), 8: np.rot90(shown, -1),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo_{orientation}.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
    from vqvae_lib.data import decode_image

    image = decode_image(path, 3, None)
    assert tuple(image.shape) == (3, 40, 60), f"orientation {orientation}: loaded sideways"
    corners = {"top-left": image[:, :16, :16], "top-right": image[:, :16, -16:],
               "bottom-left": image[:, -16:, :16], "bottom-right": image[:, -16:, -16:]}
    brightest = max(corners, key=lambda k: corners[k].float().mean())
    assert brightest == "top-left", f"orientation {orientation}: the square is {brightest}"
