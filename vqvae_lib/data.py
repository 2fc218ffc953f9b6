"""Datasets and batches: images held in memory or decoded from files, and the loader that batches them.

Every dataset yields ``(x, y)`` with ``x`` a float tensor ``(C, H, W)`` in [0, 1] and ``y`` an int label
(-1 for an unlabelled flat folder). Small datasets are held in memory as uint8 tensors: converting a
whole batch at once is far faster than a PIL transform per sample. The named datasets (MNIST, CIFAR10,
Food-101, a folder) and where they are found are in :mod:`vqvae_lib.sources`.

One rule for bad image files, wherever they come from: a file that cannot be decoded is left out, and
one warning names the files left out. Only a dataset that decodes lazily, one item at a time, cannot
leave a file out of a batch already drawn: there :class:`DatasetFileError` names the file to fix.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "DatasetFileError",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "ImageFolderDataset",
    "decode_image",
    "decode_images",
    "BatchLoader",
    "make_loader",
]

IN_MEMORY_LIMIT = 20_000  # folders/Food-101 up to this many images are decoded once into memory
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)  # what PIL raises on a bad file


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says which files go where."""


class DatasetFileError(ValueError):
    """A dataset file is not the file it should be (checksum, format, undecodable); it was not used."""


# -- images in memory ------------------------------------------------------------------------------


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



# -- decoding one image file -----------------------------------------------------------------------


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


def decode_image(source: str | os.PathLike | IO[bytes], channels: int, size: tuple[int, int] | None) -> Tensor:
    """One image file (a path or an open binary file) -> uint8 ``(channels, H, W)``, upright as its EXIF
    orientation says: any PIL mode becomes L or RGB (transparency on white), then the shorter side is
    scaled to fit ``size`` and the centre cropped. A file PIL cannot decode raises :class:`DatasetFileError` naming it."""
    try:
        with Image.open(source) as img:
            # phone photos store their rotation in EXIF instead of in the pixels: load them the way an
            # image viewer shows them (orientations 2-8; 1, 0 and none leave the pixels as they are)
            img = ImageOps.exif_transpose(img)
            img = _to_mode(img, channels)
            if size is not None:
                img = _resize_center_crop(img, size)
            arr = np.asarray(img, dtype=np.uint8)
    except _DECODE_ERRORS as err:
        raise DatasetFileError(f"could not decode {source} ({err}); remove or replace the file") from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_images(
    files: Sequence[Any],
    channels: int,
    size: tuple[int, int],
    where: str,
    read: Callable[[Any], str | os.PathLike | IO[bytes]] = lambda f: f,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """Decode every file into memory: ``(images (M, C, H, W) uint8, kept (M,) indices into files)``.
    Files that fail are left out with one warning naming them (the module's rule); ``read(file)``
    opens an entry that is not a path (e.g. a member of a zip)."""
    from tqdm.auto import tqdm

    out = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    failed: list[int] = []
    for i, f in enumerate(tqdm(files, desc=f"decoding {Path(where).name}", leave=False, disable=len(files) < 2000)):
        try:
            out[i] = decode_image(read(f), channels, size)
        except DatasetFileError:
            failed.append(i)
    warn_left_out(where, [names[i] if names else str(files[i]) for i in failed], stacklevel=3)
    bad = set(failed)
    kept = torch.tensor([i for i in range(len(files)) if i not in bad], dtype=torch.long)
    if len(kept) == 0:
        raise DatasetNotFoundError(f"none of the {len(files)} images in {where} could be decoded")
    return out[kept], kept


def warn_left_out(where: str, names: Sequence[str], stacklevel: int = 2) -> None:
    """The one warning for image files left out: how many, and the first five names."""
    if names:
        warnings.warn(
            f"{where}: skipped {len(names)} unreadable image file(s) (corrupt or not really images): "
            + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
            stacklevel=stacklevel + 1,
        )


def _size_tuple(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))



# -- a list of image files, or a folder of them -----------------------------------------------------


class ImageFolderDataset(Dataset):
    """Image files decoded one at a time: any folder, ImageFolder-style (``root/<class>/img.png``) or
    flat (``root/img.png``), or a list of files (:meth:`from_files`, as Food-101 is read).

    Images of every mode (L, RGB, RGBA, P, LA, 16-bit) become ``channels``-channel images;
    transparency is composited onto white. Each image is scaled so that its shorter side fits, then
    centre-cropped to ``image_size``.

    Scanning a folder ignores files without an image extension (one warning names them) and leaves out,
    by the module's rule, files whose header PIL cannot read. A folder that is missing, empty, or holds
    no readable image raises an error. ``labels`` are class indices in sorted folder-name order
    (``classes``), or -1 for a flat folder. :meth:`to_tensor_dataset` decodes everything into memory.
    """

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] = 64, channels: int = 3) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"image folder {root} does not exist. Point it at a folder of images, flat "
                f"(folder/photo.jpg) or one subfolder per class (folder/cats/photo.jpg)."
            )
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        ignored = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        readable, corrupt = [], []
        for p in files:
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                (readable if _header_readable(p) else corrupt).append(p)
        if ignored:
            warnings.warn(
                f"{root}: ignored {len(ignored)} file(s) that are not images: "
                + ", ".join(str(p.relative_to(root)) for p in ignored[:5])
                + (" ..." if len(ignored) > 5 else ""),
                stacklevel=2,
            )
        warn_left_out(str(root), [str(p.relative_to(root)) for p in corrupt], stacklevel=2)
        if not readable:
            raise DatasetNotFoundError(
                f"no readable images in {root} ({len(files)} file(s) found, {len(corrupt)} unreadable). "
                f"Put .jpg/.png/... images there, flat or one subfolder per class."
            )
        parts = [p.relative_to(root).parts for p in readable]
        classes = sorted({q[0] for q in parts if len(q) > 1})
        index = {c: i for i, c in enumerate(classes)}
        self._setup(root, readable, [index[q[0]] if len(q) > 1 else -1 for q in parts], classes, image_size, channels,
                    root.name)  # fmt: skip

    @classmethod
    def from_files(
        cls, root: str | os.PathLike, paths: Sequence[Path], labels: Sequence[int], classes: Sequence[str],
        image_size: int | Sequence[int] = 64, channels: int = 3, name: str = "",
    ) -> "ImageFolderDataset":  # fmt: skip
        """The given files (found under ``root``) with their labels, not scanned."""
        dataset = cls.__new__(cls)
        dataset._setup(Path(root), list(paths), list(labels), list(classes), image_size, channels, name or Path(root).name)
        return dataset

    def _setup(
        self, root: Path, paths: list[Path], labels: list[int], classes: list[str], image_size, channels: int, name: str
    ) -> None:
        if channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        self.root, self.paths, self.labels, self.classes, self.name = root, paths, labels, classes, name
        self.size, self.channels = _size_tuple(image_size), channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return decode_image(self.paths[i], self.channels, self.size).float().div_(255), self.labels[i]

    def to_tensor_dataset(self) -> TensorImageDataset:
        """Decode every image once into memory; files that fail are left out with one warning."""
        names = [_relative(p, self.root) for p in self.paths]
        images, kept = decode_images(self.paths, self.channels, self.size, str(self.root), names=names)  # type: ignore[arg-type]
        return TensorImageDataset(images, torch.tensor(self.labels, dtype=torch.long)[kept], name=self.name)


def _header_readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.size  # parses the header
        return True
    except _DECODE_ERRORS:
        return False


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# -- batches ---------------------------------------------------------------------------------------


@dataclass
class BatchLoader:
    """Shuffled mini-batches, reproducible per epoch, resumable mid-epoch, shardable over ranks.

    The order of epoch ``e`` is ``randperm(n)`` from a generator seeded with ``seed + e`` (like
    ``DistributedSampler.set_epoch``), so a run resumed at any step sees the same batches as an
    uninterrupted one (:meth:`batches_from`); each complete pass advances ``epoch`` by one. In-memory datasets are sliced directly (a
    :class:`TensorImageDataset` with one uint8->float conversion per batch, a ``TensorDataset`` such as
    the prior's code grids as it is); other datasets go through a ``DataLoader`` with ``num_workers``
    processes.
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
                f"batch_size {self.batch_size} is larger than the {len(self.dataset) // self.world_size} samples "
                f"available per process; lower batch_size or pass drop_last=False"
            )

    def __len__(self) -> int:
        n, global_batch = len(self.dataset), self.batch_size * self.world_size
        return n // global_batch if self.drop_last else -(-n // global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_from(self, step: int) -> Iterator[Any]:
        """Batches from global step ``step`` on, epoch after epoch: those an uninterrupted run would draw
        from that step (the loader is iterated, never re-created per step)."""
        epoch, offset = divmod(step, len(self))
        while True:
            self.set_epoch(epoch, offset)
            yield from self
            epoch, offset = epoch + 1, 0

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
        yield from self._load(batches)
        # a finished pass moves to the next epoch, so a plain `for` loop run epoch after epoch sees a new
        # order each time, as with a DataLoader; an iterator abandoned after one batch (the classic
        # `next(iter(loader))` every step) does not, and keeps drawing epoch 0's first batch
        self.epoch += 1

    def _load(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, ...]]:
        if isinstance(self.dataset, TensorImageDataset):
            images, labels = self.dataset.images, self.dataset.labels
            for idx in batches:
                yield images[idx].float().div_(255), labels[idx]
        elif isinstance(self.dataset, TensorDataset):
            for idx in batches:
                yield tuple(t[idx] for t in self.dataset.tensors)
        else:
            loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.num_workers)
            for x, y in loader:
                yield x, torch.as_tensor(y)


def as_loader(data: Dataset | Iterable, batch_size: int, shuffle: bool, seed: int = 0) -> Iterable:
    """``data`` itself if it already yields batches, else a :func:`make_loader` over the dataset."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed)
    return data


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0, **kwargs) -> BatchLoader:
    """A :class:`BatchLoader`; ``shuffle=False`` also keeps the last partial batch (for evaluation)."""
    kwargs.setdefault("drop_last", shuffle)
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)
