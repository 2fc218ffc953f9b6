"""Datasets: where they live, how they load, how batches are drawn.

Every dataset yields ``(x, y)`` with ``x`` a float tensor ``(C, H, W)`` in [0, 1] and ``y`` an int label
(-1 for an unlabelled flat folder). MNIST and CIFAR10 (and small folders) are held in memory as
uint8 tensors: converting a whole batch at once is far faster than a PIL transform per sample.

Where data lives (the *data root*): see :mod:`vqvae_lib.paths`.

Layout under the root (the same as torchvision's, so its downloads land in place):
  ``MNIST/raw/*-ubyte``, ``cifar-10-batches-py/`` or ``cifar10-images/{train,test}/<class>/*.jpg``,
  ``cifar10-exact-subset/cifar10_exact_subset.npz``, ``food-101/{images,meta}``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .paths import DATA_ROOT_ENV, data_root

__all__ = [
    "CIFAR10_CLASSES",
    "DatasetFileError",
    "DatasetNotFoundError",
    "load_dataset",
    "load_test_set",
    "TensorImageDataset",
    "ImageFolderDataset",
    "BatchLoader",
    "make_loader",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IN_MEMORY_LIMIT = 20_000  # folders/Food-101 up to this many images are decoded once into memory
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says which files go where."""


class DatasetFileError(ValueError):
    """A dataset file is not the file it should be (checksum, format); it was not opened or used."""


# ---------------------------------------------------------------------------------------------
# In-memory datasets and image decoding
# ---------------------------------------------------------------------------------------------


class TensorImageDataset(Dataset):
    """Images held as a uint8 tensor ``(N, C, H, W)`` with int64 labels ``(N,)``."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, name: str = "") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long() if labels is not None else torch.full((len(images),), -1, dtype=torch.long)
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int, seed: int = 0) -> "TensorImageDataset":
        """A random subset of ``n`` images (all of them if ``n >= len(self)``)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return TensorImageDataset(self.images[idx], self.labels[idx], self.name)

    def __repr__(self) -> str:
        return f"TensorImageDataset({self.name!r}, n={len(self)}, shape={self.image_shape})"


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode to ``L`` (1 channel) or ``RGB`` (3): transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray((np.asarray(img).clip(0, 1) * 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode == "LA" or img.mode == "PA" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


def _resize_center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale the shorter side to fit, then crop the centre to ``size`` (H, W)."""
    h, w = size
    scale = max(h / img.height, w / img.width)
    new = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    if new != img.size:
        img = img.resize(new, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def _image_to_uint8(img: Image.Image, channels: int, size: tuple[int, int] | None) -> Tensor:
    img = _to_mode(img, channels)
    if size is not None:
        img = _resize_center_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _size_tuple(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _decode_files(paths: Sequence[Path], channels: int, size: tuple[int, int], desc: str) -> tuple[Tensor, list[int]]:
    """Decode image files into ``(N, C, H, W)`` uint8; returns the tensor and the indices that failed."""
    from tqdm.auto import tqdm

    out = torch.empty((len(paths), channels, *size), dtype=torch.uint8)
    failed: list[int] = []
    for i, path in enumerate(tqdm(paths, desc=desc, leave=False, disable=len(paths) < 2000)):
        try:
            with Image.open(path) as img:
                out[i] = _image_to_uint8(img, channels, size)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            failed.append(i)
    return out, failed


# ---------------------------------------------------------------------------------------------
# A folder of images
# ---------------------------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Any folder of images, ImageFolder-style (``root/<class>/img.png``) or flat (``root/img.png``).

    Images of every mode (L, RGB, RGBA, P, LA, 16-bit) become ``channels``-channel images;
    transparency is composited onto white. Each image is scaled so that its shorter side fits, then
    centre-cropped to ``image_size``.

    Bad files are skipped with one warning that names them: files without an image extension are
    ignored, and files with one that PIL cannot open (corrupt, truncated header, not an image) are
    left out. A folder that is missing, empty, or holds no readable image raises an error.
    ``labels`` are class indices in sorted folder-name order (``classes``), or -1 for a flat folder.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] = 64, channels: int = 3) -> None:
        self.root = Path(root).expanduser()
        self.size = _size_tuple(image_size)
        self.channels = channels
        if channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {self.root} does not exist. Point it at a folder of images, flat "
                f"(folder/photo.jpg) or one subfolder per class (folder/cats/photo.jpg)."
            )
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
        candidates = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        ignored = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        readable, corrupt = [], []
        for p in candidates:
            try:
                with Image.open(p) as img:
                    img.size  # parses the header
                readable.append(p)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                corrupt.append(p)
        if ignored:
            warnings.warn(
                f"{self.root}: ignored {len(ignored)} file(s) that are not images: "
                + ", ".join(str(p.relative_to(self.root)) for p in ignored[:5])
                + (" ..." if len(ignored) > 5 else ""),
                stacklevel=2,
            )
        self._warn_corrupt(corrupt)
        if not readable:
            raise DatasetNotFoundError(
                f"no readable images in {self.root} ({len(files)} file(s) found, {len(corrupt)} unreadable). "
                f"Put .jpg/.png/... images there, flat or one subfolder per class."
            )
        class_dirs = sorted({p.relative_to(self.root).parts[0] for p in readable if len(p.relative_to(self.root).parts) > 1})
        self.classes: list[str] = class_dirs
        index = {c: i for i, c in enumerate(class_dirs)}
        self.paths = readable
        self.labels = [index.get(p.relative_to(self.root).parts[0], -1) if len(p.relative_to(self.root).parts) > 1 else -1 for p in readable]

    def _warn_corrupt(self, corrupt: Sequence[Path]) -> None:
        if corrupt:
            warnings.warn(
                f"{self.root}: skipped {len(corrupt)} unreadable image file(s) (corrupt or not really images): "
                + ", ".join(str(Path(p).relative_to(self.root)) for p in corrupt[:5])
                + (" ..." if len(corrupt) > 5 else ""),
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                x = _image_to_uint8(img, self.channels, self.size)
        except (OSError, ValueError, SyntaxError) as err:
            raise OSError(f"could not decode {path} ({err}); remove or replace the file") from err
        return x.float().div_(255), self.labels[i]

    def to_tensor_dataset(self) -> TensorImageDataset:
        """Decode every image once into memory; files that fail to decode are skipped with a warning."""
        images, failed = _decode_files(self.paths, self.channels, self.size, f"decoding {self.root.name}")
        self._warn_corrupt([self.paths[i] for i in failed])
        bad = set(failed)
        keep = torch.tensor([i for i in range(len(self.paths)) if i not in bad], dtype=torch.long)
        if len(keep) == 0:
            raise DatasetNotFoundError(f"none of the {len(self.paths)} images in {self.root} could be decoded")
        return TensorImageDataset(images[keep], torch.tensor(self.labels)[keep], name=str(self.root))


# ---------------------------------------------------------------------------------------------
# The named datasets
# ---------------------------------------------------------------------------------------------


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
    images = torch.empty((len(entries), 3, 32, 32), dtype=torch.uint8)
    from tqdm.auto import tqdm

    try:
        for i, (entry, _) in enumerate(tqdm(entries, desc=f"decoding cifar10 {split}", leave=False)):
            src = io.BytesIO(archive.read(entry)) if archive is not None else entry
            with Image.open(src) as img:
                images[i] = _image_to_uint8(img, 3, (32, 32))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetNotFoundError(f"could not decode CIFAR-10 image {entry} in {source}: {err}") from err
    finally:
        if archive is not None:
            archive.close()
    labels = torch.tensor([CIFAR10_CLASSES.index(cls.lower()) for _, cls in entries], dtype=torch.long)
    return TensorImageDataset(images, labels, name=f"cifar10-{split}")


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


def _load_food101(root: Path, split: str, download: bool, image_size: tuple[int, int], channels: int) -> Dataset:
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
    return _PathListDataset(list(ds._image_files), list(ds._labels), image_size, channels, list(ds.classes))


class _PathListDataset(Dataset):
    """Images from a list of file paths, decoded lazily with the same mode handling as folders."""

    def __init__(self, paths: list, labels: list[int], size: tuple[int, int], channels: int, classes: list[str]) -> None:
        self.paths, self.labels, self.size, self.channels, self.classes = paths, labels, size, channels, classes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        with Image.open(self.paths[i]) as img:
            return _image_to_uint8(img, self.channels, self.size).float().div_(255), self.labels[i]

    def to_tensor_dataset(self) -> TensorImageDataset:
        images, failed = _decode_files(self.paths, self.channels, self.size, "decoding images")
        if failed:
            raise OSError(f"{len(failed)} image(s) could not be decoded, e.g. {self.paths[failed[0]]}")
        return TensorImageDataset(images, torch.tensor(self.labels), name="food101")


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    download: bool = True,
    in_memory: bool | None = None,
) -> Dataset:
    """Load a dataset by name; items are ``(x float (C, H, W) in [0, 1], label)``.

    Args:
        name: ``"mnist"`` (28x28, 1 channel), ``"cifar10"`` (32x32 RGB; torchvision's pickles or an
            image export), ``"cifar10-exact"`` (the 3,000-image exact-pixel subset in the CI data),
            ``"food101"`` (torchvision's Food101) or ``"folder"`` (``root`` is any image folder).
        split: ``"train"`` or ``"test"``.
        root: data root (or, for ``"folder"``, the image folder itself); see :func:`data_root`.
        image_size: output size (int or (H, W)). MNIST/CIFAR keep their size unless given; Food101
            and folders default to 64.
        channels: 1 or 3; default 1 for MNIST, 3 otherwise.
        download: let torchvision download a missing dataset.
        in_memory: decode everything once into a uint8 tensor (default: yes, except Food-101 and
            folders with more than ``IN_MEMORY_LIMIT`` = 20,000 images).

    Raises:
        DatasetNotFoundError: the data is not on disk and cannot be downloaded; the message says
            which files to put where.
    """
    name = name.lower().replace("_", "-")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    size = _size_tuple(image_size)
    if name == "folder":
        if root is None:
            raise ValueError("load_dataset('folder', root=...) needs the image folder as root")
        folder = ImageFolderDataset(root, size or (64, 64), channels or 3)
        if in_memory or (in_memory is None and len(folder) <= IN_MEMORY_LIMIT):
            return folder.to_tensor_dataset()
        return folder

    base = data_root(root)
    if name == "mnist":
        ds = _load_mnist(base, split, download)
    elif name == "cifar10":
        ds = _load_cifar10(base, split, download)
    elif name == "cifar10-exact":
        ds = _load_cifar10_exact(base, split)
    elif name == "food101":
        food = _load_food101(base, split, download, size or (64, 64), channels or 3)
        return food.to_tensor_dataset() if in_memory or (in_memory is None and len(food) <= IN_MEMORY_LIMIT) else food
    else:
        raise ValueError(f"unknown dataset {name!r}; choose mnist, cifar10, cifar10-exact, food101 or folder")

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
    if name in ("food101", "folder"):
        image_size = image_size or 64
    ds = load_dataset(name, "test", root=root, image_size=image_size)
    return ds, f"{name} test ({len(ds):,} images)"


def _to_gray(images: Tensor) -> Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchLoader:
    """Shuffled mini-batches, reproducible per epoch, resumable mid-epoch, shardable over ranks.

    The order of epoch ``e`` is ``randperm(n)`` from a generator seeded with ``seed + e`` (like
    ``DistributedSampler.set_epoch``), so a run resumed at any step sees the same batches as an
    uninterrupted one. In-memory datasets are sliced directly (one uint8->float conversion per
    batch); other datasets go through a ``DataLoader`` with ``num_workers`` processes.
    ``rank``/``world_size`` shard every epoch over the processes of a distributed run: ``batch_size``
    is per process, and batch ``i`` of rank ``r`` is slice ``r`` of the single-process batch ``i`` of
    ``batch_size * world_size`` images, so that ``W`` processes together see exactly the batches one
    process would (which is what lets distributed training match single-process training).
    """

    dataset: Dataset
    batch_size: int = 128
    shuffle: bool = True
    seed: int = 0
    drop_last: bool = True
    num_workers: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    start_batch: int = 0

    def __post_init__(self) -> None:
        if len(self.dataset) == 0:
            raise ValueError("the dataset is empty")
        if self.drop_last and len(self.dataset) // self.world_size < self.batch_size:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than the {len(self.dataset) // self.world_size} images "
                f"available per process; lower batch_size or pass drop_last=False"
            )

    def __len__(self) -> int:
        n, global_batch = len(self.dataset), self.batch_size * self.world_size
        return n // global_batch if self.drop_last else -(-n // global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _batches(self) -> list[Tensor]:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        b = self.batch_size
        batches = [chunk[self.rank * b : (self.rank + 1) * b] for chunk in torch.split(order, b * self.world_size)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        return [idx for idx in batches if len(idx)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self._batches()[self.start_batch :]
        self.start_batch = 0
        if isinstance(self.dataset, TensorImageDataset):
            images, labels = self.dataset.images, self.dataset.labels
            for idx in batches:
                yield images[idx].float().div_(255), labels[idx]
        else:
            loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.num_workers)
            for x, y in loader:
                yield x, torch.as_tensor(y)


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0, **kwargs) -> BatchLoader:
    """A :class:`BatchLoader`; ``shuffle=False`` also keeps the last partial batch (for evaluation)."""
    kwargs.setdefault("drop_last", shuffle)
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)
