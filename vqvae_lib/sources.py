"""The named datasets, where they are found, and what to do when they are not.

``load_dataset(name, split)`` reads MNIST, CIFAR10 (torchvision's pickles, an image export or its
zips), the exact-pixel CIFAR10 subset, Food-101, or any folder of images, from the *data root*
(:mod:`vqvae_lib.paths`). Layout under the root (the same as torchvision's, so its downloads land in place):
``MNIST/raw/*-ubyte``, ``cifar-10-batches-py/`` or ``cifar10-images/{train,test}/<class>/*.jpg``,
``cifar10-exact-subset/cifar10_exact_subset.npz``, ``food-101/{images,meta}``. Without the data and
without network, :class:`~vqvae_lib.data.DatasetNotFoundError` says which files to put where.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .data import IMAGE_EXTENSIONS, DatasetFileError, DatasetNotFoundError, TensorImageDataset, _size_tuple, decode_images
from .image_folder import load_files, load_image_folder
from .paths import DATA_ROOT_ENV, data_root

__all__ = ["CIFAR10_CLASSES", "load_dataset", "load_test_set"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _resize_batch(images: Tensor, size: tuple[int, int] | None) -> Tensor:
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _load_mnist(root: Path, split: str, download: bool) -> TensorImageDataset:
    from torchvision.datasets import MNIST

    train = split == "train"
    try:
        ds = MNIST(str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise _missing("MNIST", root, _MNIST_HELP.format(root=root), None) from None
        try:
            ds = MNIST(str(root), train=train, download=True)
        except Exception as err:  # no network, a proxy, a mirror down: all end the same way
            raise _missing("MNIST", root, _MNIST_HELP.format(root=root), err) from err
    return TensorImageDataset(ds.data.unsqueeze(1).contiguous(), ds.targets, name=f"mnist-{split}")


_MNIST_HELP = """Put the four MNIST files (gzipped or not) in {root}/MNIST/raw/:
  train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte"""

_CIFAR_HELP = """Put CIFAR-10 under {root} in one of these forms:
  {root}/cifar-10-batches-py/  (torchvision's download: data_batch_1..5, test_batch, batches.meta), or
  {root}/cifar10-images/train/<class>/*.png|jpg and {root}/cifar10-images/test/<class>/...  (an image
  export, classes named airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck), or the
  zips of such an export, cifar10-train-jpg.zip and cifar10-test-jpg.zip, in {root}/cifar10-images/
  (read in place, without unzipping)."""

_FOOD_HELP = """Put Food-101 at {root}/food-101/ with images/<class>/<id>.jpg and meta/train.txt, meta/test.txt,
meta/classes.txt (torchvision's layout; the full download is 5 GB)."""


def _missing(name: str, root: Path, help_text: str, err: BaseException | None) -> DatasetNotFoundError:
    why = f"downloading failed ({type(err).__name__}: {err})" if err else "download=False"
    return DatasetNotFoundError(
        f"{name} is not in the data root {root} and {why}.\n{help_text}\n"
        f"Or point the data root elsewhere: load_dataset(..., root=...) or the {DATA_ROOT_ENV} environment variable."
    )


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR-10's batch files are made of (dicts, lists, strings, numbers and NumPy
    arrays): a pickle that names any other function or class is refused instead of run."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _cifar_md5s() -> dict[str, str]:
    """The published md5 of each file of torchvision's CIFAR-10 download."""
    from torchvision.datasets import CIFAR10

    return {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}


def _unpickle_cifar(path: Path) -> tuple[np.ndarray, list[int]]:
    """One batch file, after checking it is the published file (torchvision's md5), read with an
    unpickler that cannot run code: a file that fails either check is refused with an error naming it."""
    expected = _cifar_md5s().get(path.name)
    raw = path.read_bytes()  # checked and unpickled from the same bytes: the file cannot change between
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()  # a checksum, as torchvision's (FIPS-safe)
    if digest != expected:
        raise DatasetFileError(
            f"{path} is not the published CIFAR-10 file (md5 {digest}, expected {expected}), so it was not "
            f"opened. Delete the folder {path.parent} and download CIFAR-10 again, or use the image export."
        )
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data, labels = entry["data"], list(entry.get("labels", entry.get("fine_labels")))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            raise ValueError("'data' is not a (N, 3072) uint8 array")
        if len(labels) != len(data) or not all(isinstance(v, int) and 0 <= v < 10 for v in labels):
            raise ValueError("'labels' are not N integers in 0..9")
        return data, labels
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError, EOFError) as err:
        raise DatasetFileError(f"{path} is not a CIFAR-10 batch file ({err}); it was not used.") from err


def _load_cifar10(root: Path, split: str, download: bool) -> TensorImageDataset:
    batches = root / "cifar-10-batches-py"
    if batches.is_dir():
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        missing = [f for f in files if not (batches / f).exists()]
        if missing:
            raise DatasetNotFoundError(f"{batches} lacks {', '.join(missing)}.\n" + _CIFAR_HELP.format(root=root))
        data, labels = zip(*(_unpickle_cifar(batches / f) for f in files))
        images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))
        return TensorImageDataset(images, torch.tensor(sum(labels, [])), name=f"cifar10-{split}")

    export = _cifar_export(root, split)
    if export is not None:
        return _load_cifar_export(export, split)

    if download:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=split == "train", download=True)
        except Exception as err:
            raise _missing("CIFAR-10", root, _CIFAR_HELP.format(root=root), err) from err
        return _load_cifar10(root, split, download=False)
    raise _missing("CIFAR-10", root, _CIFAR_HELP.format(root=root), None)


def _cifar_export(root: Path, split: str) -> Path | None:
    """The ``<split>/`` folder of a CIFAR-10 image export, or the zip that holds one."""
    for base in (root / "cifar10-images", root / "cifar10", root):
        if (base / split).is_dir():
            return base / split
    for base in (root / "cifar10-images", root):
        if (base / f"cifar10-{split}-jpg.zip").exists():
            return base / f"cifar10-{split}-jpg.zip"
    return None


def _load_cifar_export(source: Path, split: str) -> TensorImageDataset:
    """Decode an image export, ``<split>/<class>/*.jpg``, from its folder or straight from its zip
    (nothing is extracted or written: the data root may be read-only)."""
    archive = zipfile.ZipFile(source) if source.suffix == ".zip" else None
    if archive is not None:
        names = [n for n in archive.namelist() if n.startswith(f"{split}/") and n.lower().endswith(IMAGE_EXTENSIONS)]
        entries = [(n, n.split("/")[1]) for n in sorted(names) if n.count("/") == 2]
    else:
        entries = [(p, p.parent.name) for p in sorted(source.glob("*/*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
    class_names = {cls for _, cls in entries}
    if archive is None:  # empty class folders count too
        class_names |= {d.name for d in source.iterdir() if d.is_dir()}
    unknown = sorted(c for c in class_names if c.lower() not in CIFAR10_CLASSES)
    if unknown:
        raise DatasetNotFoundError(
            f"{source} has class folders that are not CIFAR-10's: {unknown}; expected {list(CIFAR10_CLASSES)}"
        )
    if not entries:
        raise DatasetNotFoundError(f"no images under {source}/<class>/.\n" + _CIFAR_HELP.format(root=source.parent.parent))
    entries.sort(key=lambda e: (CIFAR10_CLASSES.index(e[1].lower()), str(e[0])))
    try:
        read = (lambda name: io.BytesIO(archive.read(name))) if archive is not None else (lambda path: path)
        images, kept = decode_images([e for e, _ in entries], 3, (32, 32), str(source), read=read,
                                     names=[str(e) for e, _ in entries])  # fmt: skip
    finally:
        if archive is not None:
            archive.close()
    labels = torch.tensor([CIFAR10_CLASSES.index(cls.lower()) for _, cls in entries], dtype=torch.long)
    return TensorImageDataset(images, labels[kept], name=f"cifar10-{split}")


def _load_cifar10_exact(root: Path, split: str) -> TensorImageDataset:
    path = root / "cifar10-exact-subset" / "cifar10_exact_subset.npz"
    if not path.exists():
        raise DatasetNotFoundError(
            f"{path} not found: this 3,000-image subset of CIFAR-10 with exact pixels (x_train, y_train, "
            f"x_test, y_test as uint8 arrays) is shipped with the project's CI data; use 'cifar10' elsewhere."
        )
    with np.load(path, allow_pickle=False) as z:
        x, y = z[f"x_{split}"], z[f"y_{split}"]
    return TensorImageDataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.astype(np.int64)), name=f"cifar10-exact-{split}")


def _food101_base(root: Path) -> Path | None:
    for base in (root, root / "food-101-sample"):
        if (base / "food-101" / "images").is_dir() and (base / "food-101" / "meta").is_dir():
            return base
    return None


def _food101_sample(split: str) -> dict[str, list[str]]:
    """The committed names of notebook 7's 800 photos: class -> ["class/id", ...] for ``split``."""
    with (Path(__file__).parent / "food101_sample.json").open(encoding="utf-8") as f:
        return json.load(f)[split]


def _load_food101(root: Path, split: str, download: bool, image_size: tuple[int, int], channels: int,
                  in_memory: bool | None, cache: bool | None, sample: bool) -> Dataset:  # fmt: skip
    from torchvision.datasets import Food101

    base = _food101_base(root)
    if base is None:
        if not download:
            raise _missing("Food-101", root, _FOOD_HELP.format(root=root), None)
        try:
            Food101(str(root), split=split, download=True)
        except Exception as err:
            raise _missing("Food-101", root, _FOOD_HELP.format(root=root), err) from err
        base = root
    ds = Food101(str(base), split=split, download=False)
    images = base / "food-101"
    files = [Path(p).relative_to(images).as_posix() for p in ds._image_files]  # "images/<class>/<id>.jpg"
    labels, classes = list(ds._labels), list(ds.classes)
    if sample:  # the same 800 photos whether the data root holds the whole dataset or only them
        chosen = _food101_sample(split)
        wanted = {name for names_of_class in chosen.values() for name in names_of_class}  # "<class>/<id>"
        found = {file.removeprefix("images/").removesuffix(".jpg"): file for file in files}
        missing = sorted(wanted - set(found))
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} of the {len(wanted)} Food-101 {split} photos of the sample are not in {images} "
                f"(for example images/{missing[0]}.jpg): a damaged or partial download? "
                "load_dataset('food101-full') loads whatever is there"
            )
        classes = sorted(chosen)
        keep = [(file, classes.index(name.split("/")[0])) for name, file in found.items() if name in wanted]
        files, labels = [file for file, _ in keep], [label for _, label in keep]
    return load_files(images, files, labels, classes, image_size, channels,
                      f"food101-{split}" if sample else f"food101-full-{split}", cache=cache, in_memory=in_memory)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    download: bool = True,
    in_memory: bool | None = None,
    cache: bool | None = None,
) -> Dataset:
    """Load a dataset by name; items are ``(x float (C, H, W) in [0, 1], label)``.

    Args:
        name: ``"mnist"`` (28x28, 1 channel), ``"cifar10"`` (32x32 RGB; torchvision's pickles or an
            image export), ``"cifar10-exact"`` (the 3,000-image exact-pixel subset in the CI data),
            ``"food101"`` (notebook 7's 800 photos of torchvision's Food101: 10 classes, 60 train and 20
            test photos each, chosen by a committed list of names, from a full download or from the
            sample alone), ``"food101-full"`` (all of Food-101: 75,750 train and 25,250 test photos) or
            ``"folder"`` (``root`` is any image folder).
        split: ``"train"`` or ``"test"``; for a folder also ``"all"`` (the test split is the tenth held
            out by a hash of each file's path: :func:`vqvae_lib.image_folder.held_out`).
        root: data root (or, for ``"folder"``, the image folder itself); see :func:`data_root`.
        image_size: output size (int or (H, W)). MNIST/CIFAR keep their size unless given; Food101
            and folders default to 64.
        channels: 1 or 3; default 1 for MNIST, 3 otherwise, and for a folder 1 if every image in it
            is grayscale (with a warning that says so).
        download: let torchvision download a missing dataset.
        in_memory: decode everything once into a uint8 tensor (default: yes, unless Food-101's or a
            folder's decoded images need more than a quarter of the machine's memory; then they are
            decoded batch by batch, with a warning). Folders and Food-101 are decoded once and cached
            under the data root (:mod:`vqvae_lib.image_folder`).
        cache: for Food-101 and folders, read and write that cache (default: yes, unless the
            ``VQVAE_FOLDER_CACHE`` environment variable is ``0``).

    Raises:
        DatasetNotFoundError: the data is not on disk and cannot be downloaded; the message says
            which files to put where.
    """
    name = name.lower().replace("_", "-")
    size = _size_tuple(image_size)
    if name == "folder":
        if root is None:
            raise ValueError("load_dataset('folder', root=...) needs the image folder as root")
        return load_image_folder(root, split, size or (64, 64), channels, cache=cache, in_memory=in_memory)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")

    base = data_root(root)
    if name == "mnist":
        ds = _load_mnist(base, split, download)
    elif name == "cifar10":
        ds = _load_cifar10(base, split, download)
    elif name == "cifar10-exact":
        ds = _load_cifar10_exact(base, split)
    elif name in ("food101", "food101-full"):
        sample = name == "food101"
        return _load_food101(base, split, download, size or (64, 64), channels or 3, in_memory, cache, sample)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose mnist, cifar10, cifar10-exact, food101, food101-full or folder")

    if channels is not None and channels != ds.images.shape[1]:
        imgs = ds.images.expand(-1, 3, -1, -1).contiguous() if channels == 3 else _to_gray(ds.images)
        ds = TensorImageDataset(imgs, ds.labels, ds.name)
    if size is not None:
        ds = TensorImageDataset(_resize_batch(ds.images, size), ds.labels, ds.name)
    return ds


def load_test_set(
    name: str, root: str | os.PathLike | None = None, image_size: int | Sequence[int] | None = None
) -> tuple[Dataset, str]:
    """The test images the series reports metrics on, and a description of them.

    For CIFAR10 these are the exact-pixel test images of ``cifar10-exact`` when the data root has
    them (the JPEG export's compression would flatter the scores), otherwise the regular test split.
    Other datasets give their ``"test"`` split (Food-101 and folders at ``image_size``, default 64).
    """
    name = name.lower().replace("_", "-")
    if name == "cifar10":
        try:
            exact = load_dataset("cifar10-exact", "test", root=root)
            return exact, f"cifar10-exact test ({len(exact):,} exact-pixel images)"
        except DatasetNotFoundError:
            pass
    if name in ("food101", "food101-full", "folder"):
        image_size = image_size or 64
    ds = load_dataset(name, "test", root=root, image_size=image_size)
    return ds, f"{name} test ({len(ds):,} images)"


def _to_gray(images: Tensor) -> Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
