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

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "DatasetFileError",
    "DatasetNotFoundError",
    "TensorImageDataset",
    "decode_image",
    "decode_one",
    "decode_images",
    "decode_many",
    "BatchLoader",
    "make_loader",
]

PLUGIN_EXTENSIONS = (".heic", ".heif", ".avif")  # phone formats PIL reads only with a plugin or a recent build
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm") + PLUGIN_EXTENSIONS
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)  # what PIL raises on a bad file


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says which files go where."""


class DatasetFileError(ValueError):
    """A dataset file is not the file it should be (checksum, format, undecodable); it was not used.
    ``reason`` is ``"corrupt"``, ``"permission"``, ``"vanished"``, ``"unsupported"`` or ``"too_large"``."""

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


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


def _resize_center_crop(
    img: Image.Image, size: tuple[int, int], upright: tuple[int, int] | None = None, box: tuple[float, ...] | None = None
) -> Image.Image:
    """Scale the shorter side to fit, then crop the centre to ``size`` (H, W). ``upright`` is the
    image's (width, height) before a JPEG draft shrank it, and ``box`` the part of ``img`` its content
    covers: the geometry (scaled size, crop) is computed from them, so that a drafted image is cut
    exactly where the full-size one would be."""
    h, w = size
    width, height = upright or img.size
    scale = max(h / height, w / width)
    new = (max(w, round(width * scale)), max(h, round(height * scale)))
    if new != img.size:
        img = img.resize(new, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS, box=box)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


class DecodedImage(NamedTuple):
    """What :func:`decode_one` returns: the pixels and what the folder loader reports about them."""

    pixels: Tensor  # uint8 (channels, H, W)
    upright: tuple[int, int]  # (width, height) of the file's image, upright, before any resizing
    grayscale: bool  # the file holds no colour (every pixel has R == G == B once decoded)


def decode_image(source: str | os.PathLike | IO[bytes], channels: int, size: tuple[int, int] | None) -> Tensor:
    """One image file (a path or an open binary file) -> uint8 ``(channels, H, W)``, upright as its EXIF
    orientation says: any PIL mode becomes L or RGB (transparency on white), then the shorter side is
    scaled to fit ``size`` and the centre cropped. A file PIL cannot decode raises :class:`DatasetFileError` naming it."""
    return decode_one(source, channels, size).pixels


def decode_one(source: str | os.PathLike | IO[bytes], channels: int, size: tuple[int, int] | None) -> DecodedImage:
    """:func:`decode_image`, also saying how large the image was and whether it holds colour.

    A JPEG much larger than ``size`` is decoded straight at 1/2, 1/4 or 1/8 of its size (the DCT
    scaling of libjpeg, PIL's ``Image.draft``), never below four times the size the resize needs, so
    that the final Lanczos step still has four source pixels per output pixel: 6x faster for 12-megapixel
    phone photos (12x with the threads of :func:`decode_many`), within 0.15 grey levels of 255 of a full
    decode on average (``benchmarks/folder.py`` measures both)."""
    suffix = Path(str(getattr(source, "name", source))).suffix.lower()
    if suffix in PLUGIN_EXTENSIONS:
        format_supported(suffix)  # registers the HEIC plugin, when installed, before PIL opens the file
    try:
        with Image.open(source) as img:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            upright = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
            # (MPO, a JPEG with extra images such as a depth map, is one too)
            extent = _draft_jpeg(img, size, upright) if size is not None and isinstance(img, JpegImageFile) else None
            # phone photos store their rotation in EXIF instead of in the pixels: load them the way an
            # image viewer shows them (orientations 2-8; 1, 0 and none leave the pixels as they are)
            img = ImageOps.exif_transpose(img)
            grayscale = img.mode in _GRAY_MODES
            img = _to_mode(img, channels)
            if size is not None:
                box = _upright_box(extent, orientation, img.size) if extent else None
                img = _resize_center_crop(img, size, upright, box)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as err:
        raise DatasetFileError(f"{source} is larger than PIL's safety limit ({err})", "too_large") from err
    except PermissionError as err:
        raise DatasetFileError(f"no permission to read {source}; fix it with chmod or remove the file", "permission") from err
    except FileNotFoundError as err:
        raise DatasetFileError(f"{source} disappeared before it was read", "vanished") from err
    except _DECODE_ERRORS as err:
        reason = "unsupported" if suffix in PLUGIN_EXTENSIONS and not format_supported(suffix) else "corrupt"
        raise DatasetFileError(f"could not decode {source} ({err}); remove or replace the file", reason) from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif not grayscale:  # a colour mode can still hold a grey picture (a scan saved as RGB JPEG)
        grayscale = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    return DecodedImage(torch.from_numpy(arr.copy()).permute(2, 0, 1), tuple(upright), grayscale)


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
_EXIF_ORIENTATION = 0x0112
_JPEG_OVERSAMPLING = 4  # keep at least 4 decoded pixels per output pixel, so that Lanczos does the filtering


def _draft_jpeg(img: Image.Image, size: tuple[int, int], upright: tuple[int, int]) -> tuple[float, float] | None:
    """Ask libjpeg for the smallest 1/2, 1/4 or 1/8 scale that still leaves ``_JPEG_OVERSAMPLING``
    pixels per output pixel in the crop (the cover scale is the upright image's: EXIF may swap sides).
    Returns the width and height the image's content covers in the reduced image: ``W / s`` of its
    ``ceil(W / s)`` pixels, the last one only partly filled when ``W`` is not a multiple of ``s``."""
    scale = max(size[0] / upright[1], size[1] / upright[0]) * _JPEG_OVERSAMPLING
    if scale > 0.5:  # libjpeg scales by 1/2, 1/4 or 1/8 only
        return None
    drafted = img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
    return (drafted[1][2], drafted[1][3]) if drafted else None


def _upright_box(extent: tuple[float, float], orientation: int, size: tuple[int, int]) -> tuple[float, ...]:
    """Where the reduced image's content (``extent``, from its top-left corner before the EXIF turn)
    lies once turned upright: the partly filled last column or row ends up on another side."""
    a, b = extent if orientation not in (5, 6, 7, 8) else extent[::-1]
    width, height = size
    x0 = width - a if orientation in (2, 3, 6, 7) else 0
    y0 = height - b if orientation in (3, 4, 7, 8) else 0
    return (x0, y0, x0 + a, y0 + b)


@functools.cache
def format_supported(suffix: str) -> bool:
    """Whether this Python can decode files with this extension: HEIC/HEIF (iPhone photos) need the
    pillow-heif plugin, which is registered here when installed; AVIF needs a Pillow built with it."""
    suffix = suffix.lower()
    if suffix in (".heic", ".heif"):
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        return True
    if suffix == ".avif":
        from PIL import features

        return bool(features.check("avif"))
    return suffix in IMAGE_EXTENSIONS


def decode_images(
    files: Sequence[Any],
    channels: int,
    size: tuple[int, int],
    where: str,
    read: Callable[[Any], str | os.PathLike | IO[bytes]] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """Decode every file into memory: ``(images (M, C, H, W) uint8, kept (M,) indices into files)``.
    Files that fail are left out with one warning naming them (the module's rule); ``read(file)``
    opens an entry that is not a path (e.g. a member of a zip)."""
    read = read or _as_is
    names = list(names) if names is not None else [str(f) for f in files]
    sources: list[Callable[[], Any]] = []
    unread: dict[int, str] = {}
    for i, f in enumerate(files):
        if read is _as_is:
            sources.append(lambda f=f: f)
            continue
        try:  # read here, in this thread: a zip archive's shared file handle is not for many threads
            data = read(f)
        except Exception:  # a member with a bad CRC or a broken deflate stream: that file is left out
            data, unread[i] = None, "corrupt"
        sources.append(lambda data=data: data)
    todo = [i for i in range(len(files)) if i not in unread]
    decoded_todo, failed_todo = decode_many([sources[i] for i in todo], channels, size, Path(where).name)
    decoded = {todo[k]: v for k, v in decoded_todo.items()}
    failures = {**unread, **{todo[k]: v for k, v in failed_todo.items()}}
    warn_failures(where, {names[i]: reason for i, reason in failures.items()}, stacklevel=3)
    kept = torch.tensor([i for i in range(len(files)) if i not in failures], dtype=torch.long)
    if len(kept) == 0:
        raise DatasetNotFoundError(f"none of the {len(files)} images in {where} could be decoded")
    return torch.stack([decoded[i].pixels for i in kept.tolist()]), kept


def _as_is(f: Any) -> Any:
    return f


PROGRESS_FROM = 300  # a folder with more images than this shows a progress bar while it is decoded


def decode_many(
    sources: Sequence[Callable[[], Any]], channels: int, size: tuple[int, int] | None, label: str = "images",
    workers: int | None = None,
) -> tuple[dict[int, DecodedImage], dict[int, str]]:  # fmt: skip
    """Decode ``sources`` (each a callable giving a path or an open file) with a pool of threads: PIL
    releases the GIL while it decodes and resizes, so the threads run on every core without the cost
    of starting processes (which matters on macOS and Windows, where a process starts a new Python).
    Returns the decoded images and, for each file that failed, the reason (:class:`DatasetFileError`)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def one(i: int) -> tuple[int, DecodedImage | str]:
        try:
            return i, decode_one(sources[i](), channels, size)
        except DatasetFileError as err:
            return i, err.reason
        except Exception:  # whatever else one broken file raises, it must not end the whole load
            return i, "corrupt"

    workers = workers or min(8, os.cpu_count() or 1)
    decoded: dict[int, DecodedImage] = {}
    failures: dict[int, str] = {}
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(one, range(len(sources)))
        for i, result in tqdm(results, total=len(sources), desc=f"decoding {label}", leave=False,
                              disable=len(sources) <= PROGRESS_FROM):  # fmt: skip
            if isinstance(result, str):
                failures[i] = result
            else:
                decoded[i] = result
    return decoded, failures


_FAILURE_TEXT = {
    "corrupt": "skipped {n} unreadable image file(s) (corrupt or not really images)",
    "permission": "skipped {n} file(s) it has no permission to read (fix with chmod, or move them out)",
    "vanished": "skipped {n} file(s) that disappeared while the folder was read",
    "too_large": "skipped {n} image(s) larger than PIL's safety limit against decompression bombs "
                 "(PIL.Image.MAX_IMAGE_PIXELS; raise it if you trust the files)",
    "unsupported": "skipped {n} HEIC/AVIF photo(s) that this Python cannot decode: HEIC needs the pillow-heif "
                   "plugin (pip install pillow-heif; the project's Pipfile installs it), AVIF a Pillow built with "
                   "AVIF (Pillow 11.3 or newer from pip); or convert them to JPEG",
}  # fmt: skip


def warn_failures(where: str, failures: dict[str, str], stacklevel: int = 2) -> None:
    """One warning per kind of failure (``name -> reason``), each naming the first five files."""
    for reason, text in _FAILURE_TEXT.items():
        names = [printable(name) for name, r in failures.items() if r == reason]
        if names:
            warnings.warn(f"{where}: {text.format(n=len(names))}: " + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""),
                          stacklevel=stacklevel + 1)  # fmt: skip


def printable(name: str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 (kept by Python as surrogates) as
    backslash escapes such as ``\\xe9``, since printing them as they are raises UnicodeEncodeError."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _size_tuple(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


# -- batches ---------------------------------------------------------------------------------------


@dataclass
class BatchLoader:
    """Shuffled mini-batches, reproducible per epoch, resumable mid-epoch, shardable over ranks.

    The order of epoch ``e`` is ``randperm(n)`` from a generator seeded with ``seed + e`` (like
    ``DistributedSampler.set_epoch``), so a run resumed at any step sees the same batches as an
    uninterrupted one (:meth:`batches_from`); each complete pass advances ``epoch`` by one. In-memory datasets are sliced directly (a
    :class:`TensorImageDataset` with one uint8->float conversion per batch, a ``TensorDataset`` such as
    the prior's code grids as it is); other datasets go through a ``DataLoader`` with ``num_workers``
    processes (by default up to 4 on Linux for a folder too large for memory, so that it is decoded
    while the model trains; see :func:`_default_workers`).
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
    num_workers: int | None = None  # None: up to 4 processes for an ImageFolderDataset on Linux, else 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    start_batch: int = 0

    def __post_init__(self) -> None:
        if self.num_workers is None:
            self.num_workers = _default_workers(self.dataset)
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


def _default_workers(dataset: Dataset) -> int:
    """Worker processes only where files are decoded batch by batch, and only where a worker is a fork
    of this process (Linux): where it would start a new Python (macOS, Windows) a script without an
    ``if __name__ == "__main__":`` guard fails, and a new loader per epoch restarts them every epoch;
    there, pass ``num_workers`` yourself."""
    import multiprocessing

    if not getattr(dataset, "decodes_files", False) or multiprocessing.get_start_method(allow_none=False) != "fork":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores)


def as_loader(data: Dataset | Iterable, batch_size: int, shuffle: bool, seed: int = 0) -> Iterable:
    """``data`` itself if it already yields batches, else a :func:`make_loader` over the dataset."""
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed)
    return data


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = True, seed: int = 0, **kwargs) -> BatchLoader:
    """A :class:`BatchLoader`; ``shuffle=False`` also keeps the last partial batch (for evaluation)."""
    kwargs.setdefault("drop_last", shuffle)
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)
