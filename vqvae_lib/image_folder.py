"""A folder of your own images: found, decoded fast, cached, split, and held in memory or streamed.

``load_dataset("folder", split, root=FOLDER)`` (and Food-101, a list of files) comes here:

1. **scan** the folder (:func:`scan_folder`): image files by extension, flat or one subfolder per
   class, following links to other folders but never round a loop; hidden files skipped;
2. **decode** them into uint8 tensors with threads, JPEGs at a reduced size straight from the file
   (:func:`vqvae_lib.data.decode_many`), or take them from the **cache** (:mod:`vqvae_lib.image_cache`), so that a re-load decodes
   only what was added or changed;
3. **split** by a hash of each file's relative path (:func:`held_out`): adding a photo never moves
   another between train and test, and the split is the same wherever the folder is used;
4. **in memory or streamed**: decided by the bytes the decoded images need against a quarter of the
   machine's (or container's) memory (:func:`memory_budget`); streamed folders decode batch by batch,
   in worker processes on Linux.

Every problem is a warning that names the files (or an error when nothing usable is left), never a
silent loss: files that are not images, broken or unreadable ones, links that loop, images smaller
than the size asked for, a folder that changed while it was read.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .data import (
    _DECODE_ERRORS,
    _GRAY_MODES,
    IMAGE_EXTENSIONS,
    PLUGIN_EXTENSIONS,
    PROGRESS_FROM,
    DatasetNotFoundError,
    DecodedImage,
    TensorImageDataset,
    _size_tuple,
    decode_image,
    decode_many,
    format_supported,
    printable,
    warn_failures,
)
from .image_cache import CACHE_FORMAT, cache_enabled, cache_path, read_cache, write_cache

__all__ = [
    "TEST_FRACTION",
    "describe_split",
    "FolderScan",
    "ImageFolderDataset",
    "held_out",
    "load_files",
    "load_image_folder",
    "memory_budget",
    "scan_folder",
]

TEST_FRACTION = 0.1  # the share of a folder held out for testing
IN_MEMORY_FRACTION = 0.25  # decoded images up to this share of the machine's memory are held in memory


# -- finding the files ------------------------------------------------------------------------------


@dataclass
class FolderScan:
    """The image files of a folder: ``names`` relative to ``root`` with ``/`` separators, sorted, and
    their ``(bytes, modification time in ns)`` when scanned; what was passed over, and why."""

    root: Path
    names: list[str] = field(default_factory=list)
    stats: list[tuple[int, int]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files without an image extension
    problems: list[str] = field(default_factory=list)  # link loops, broken links, folders not listable

    @property
    def paths(self) -> list[Path]:
        return [self.root / name for name in self.names]

    def labels(self) -> tuple[list[int], list[str]]:
        """Class index per file (its top folder, in sorted order; -1 for files at the top) and the classes."""
        parts = [name.split("/") for name in self.names]
        classes = sorted({p[0] for p in parts if len(p) > 1})
        index = {c: i for i, c in enumerate(classes)}
        return [index[p[0]] if len(p) > 1 else -1 for p in parts], classes


def scan_folder(root: str | os.PathLike) -> FolderScan:
    """Every image file under ``root`` (see :class:`FolderScan`). Links to folders are followed once:
    a link back into a folder already read (a loop) is reported in ``problems`` and not entered."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} does not exist. Point it at a folder of images, flat "
            f"(folder/photo.jpg) or one subfolder per class (folder/cats/photo.jpg)."
        )
    scan = FolderScan(root)
    entries: list[tuple[str, tuple[int, int]]] = []
    visited: set[tuple[int, int]] = set()

    def relative(path: str) -> str:
        return Path(os.path.relpath(path, root)).as_posix()

    def cannot_list(err: OSError) -> None:
        scan.problems.append(f"{printable(relative(err.filename))}: could not list it ({err.strerror})")

    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=cannot_list):
        try:
            info = os.stat(folder)
        except OSError as err:  # removed while the folder was being read
            scan.problems.append(f"{printable(relative(folder))}: {err.strerror}")
            subfolders.clear()
            continue
        if (info.st_dev, info.st_ino) in visited:
            scan.problems.append(f"{printable(relative(folder))}: a link to a folder already read (a loop?); not read twice")
            subfolders.clear()
            continue
        visited.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError as err:  # a dangling link, or a link that points at itself
                scan.problems.append(f"{printable(relative(path))}: {err.strerror} (a broken or looping link)")
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                entries.append((relative(path), (info.st_size, info.st_mtime_ns)))
            else:
                scan.ignored.append(relative(path))
    entries.sort()
    scan.names = [name for name, _ in entries]
    scan.stats = [stat for _, stat in entries]
    return scan


def _warn_scan(scan: FolderScan) -> None:
    where = str(scan.root)
    if scan.ignored:
        warnings.warn(f"{where}: ignored {len(scan.ignored)} file(s) that are not images: "
                      + ", ".join(printable(n) for n in scan.ignored[:5]) + (" ..." if len(scan.ignored) > 5 else ""),
                      stacklevel=4)  # fmt: skip
    if scan.problems:
        warnings.warn(f"{where}: passed over {len(scan.problems)} link(s) or folder(s): " + "; ".join(scan.problems[:5]),
                      stacklevel=4)  # fmt: skip


# -- the held-out split -----------------------------------------------------------------------------


def held_out(names: Sequence[str], fraction: float = TEST_FRACTION) -> Tensor:
    """Which files are held out for testing: those whose relative path (``/``-separated, in Unicode
    NFC form, so that macOS's decomposed names split as they do elsewhere) hashes (SHA-256) below
    ``fraction``. Adding or removing a photo changes no other photo's side, except in a folder so small
    that no hash falls below ``fraction``: it still gets one test image (the lowest hash), which a new
    photo hashing below ``fraction`` then replaces. At least one image is always kept for training."""
    u = torch.tensor([int.from_bytes(hashlib.sha256(_key(n)).digest()[:8], "big") / 2**64 for n in names],
                     dtype=torch.float64)  # fmt: skip
    mask = u < fraction
    if len(names) >= 2 and not mask.any():
        mask[u.argmin()] = True
    if len(names) >= 2 and mask.all():
        mask[u.argmax()] = False
    return mask


def _key(name: str) -> bytes:
    # names that are not UTF-8 on disk come as surrogates (os.fsdecode): kept as their bytes
    return unicodedata.normalize("NFC", name).encode("utf-8", "surrogateescape")


def _split_rows(names: Sequence[str], split: str, where: str) -> list[int]:
    if split == "all":
        return list(range(len(names)))
    if len(names) < 2:
        raise DatasetNotFoundError(
            f"{where} has {len(names)} usable image(s): a train/test split needs at least 2 (one is held out "
            f"to test on), and a model that generalises needs hundreds. Add images, or load split='all'."
        )
    mask = held_out(names)
    return [i for i in range(len(names)) if bool(mask[i]) == (split == "test")]


def describe_split(n_train: int, n_test: int, batch_size: int) -> str:
    """What a folder's size means for the model trained on it, in a sentence or two."""
    found = f"{n_train + n_test:,} images: {n_train:,} to train on, {n_test:,} held out to test on; batches of {batch_size}."
    notes = [found]
    if n_train < 100:
        notes.append("So few images: the model will fit them far better than photos it has not seen (compare the "
                     "training and test errors). A few hundred photos narrow that gap; thousands give a model that generalises.")
    elif n_train < 1000:
        notes.append("Enough for a first model; with thousands of photos the test error comes closer to the training error.")
    if n_test < 10:
        notes.append(f"With {n_test} test image(s), the test error is a rough estimate.")
    return " ".join(notes)


# -- how much fits in memory ------------------------------------------------------------------------


def memory_budget() -> int:
    """Bytes of decoded images held in memory before a folder is streamed instead:
    ``IN_MEMORY_FRACTION`` of this machine's memory (4 GiB when it cannot be told)."""
    total = _physical_memory()
    return int(total * IN_MEMORY_FRACTION) if total else 4 * 2**30


def _physical_memory() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # Linux, macOS
    except (AttributeError, ValueError, OSError):
        total = None
    if total:
        return min(total, _container_limit() or total)
    try:  # Windows
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong),
                        ("available", ctypes.c_ulonglong), ("rest", ctypes.c_ulonglong * 5)]  # fmt: skip

        status = MemoryStatus(length=ctypes.sizeof(MemoryStatus))
        return int(status.total) if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)) else None
    except Exception:  # not Windows either: the fixed default
        return None


def _container_limit() -> int | None:
    """A Linux container's memory limit (cgroup v2, then v1), which can be far below the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max", or v1's huge number, mean no limit
            return int(text)
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


# -- decoding a list of files, through the cache -----------------------------------------------------


@dataclass
class _Decoded:
    images: Tensor  # uint8 (n, C, H, W), zeros where a file failed
    failed: list[str]  # "" for a decoded file, else the reason
    upright: Tensor  # int64 (n, 2): each image's (width, height) before resizing
    grayscale: Tensor  # bool (n,)
    from_cache: int = 0


def _decode_files(
    root: Path, names: list[str], stats: list[tuple[int, int]], size: tuple[int, int], channels: int, tag: str,
    cache: bool,
) -> _Decoded:  # fmt: skip
    """Decode ``names`` (relative to ``root``), taking every file whose size and modification time are
    unchanged from the cache, and write the cache back when anything was decoded."""
    path = cache_path(root, size, channels, tag) if cache else None
    if path is not None and root.resolve() in path.resolve().parents:
        warnings.warn(f"the data root lies inside the image folder {root}: no cache is written there", stacklevel=4)
        path = None
    cached = read_cache(path, size, channels) if path is not None else None
    rows: dict[str, int] = {}
    if cached is not None:
        current = dict(zip(names, stats))
        # a file that failed is tried again: the fix (chmod, a plugin installed) changes neither size nor time
        rows = {n: i for i, (n, s, f) in enumerate(zip(cached["names"], cached["stats"], cached["failed"]))
                if tuple(s) == current.get(n) and not f}  # fmt: skip

    n = len(names)
    out = _Decoded(torch.zeros((n, channels, *size), dtype=torch.uint8), [""] * n,
                   torch.zeros((n, 2), dtype=torch.long), torch.zeros(n, dtype=torch.bool))  # fmt: skip
    todo = []
    for i, name in enumerate(names):
        j = rows.get(name)
        if j is None:
            todo.append(i)
            continue
        out.images[i], out.upright[i], out.grayscale[i] = cached["images"][j], cached["upright"][j], cached["grayscale"][j]
    out.from_cache = n - len(todo)
    if todo:
        decoded, failures = decode_many([lambda p=root / names[i]: p for i in todo], channels, size, root.name)
        for k, i in enumerate(todo):
            result: DecodedImage | None = decoded.get(k)
            if result is None:
                out.failed[i] = failures[k]
            else:
                out.images[i], out.upright[i], out.grayscale[i] = result.pixels, torch.tensor(result.upright), result.grayscale
        if path is not None:
            # the stats are those taken before decoding: a file changed meanwhile is decoded again next time
            write_cache(path, {"format": CACHE_FORMAT, "root": str(root.resolve()), "names": names,
                                "stats": [list(s) for s in stats], "failed": out.failed, "images": out.images,
                                "upright": out.upright, "grayscale": out.grayscale})  # fmt: skip
    return out


def _warn_changed(scan: FolderScan) -> None:
    """Compare the folder with the scan the images were read from; say what changed meanwhile."""
    now = scan_folder(scan.root)
    before, after = dict(zip(scan.names, scan.stats)), dict(zip(now.names, now.stats))
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    changed = [n for n in before if n in after and before[n] != after[n]]
    if added or removed or changed:
        warnings.warn(
            f"{scan.root} changed while it was read ({len(added)} added, {len(removed)} removed, {len(changed)} "
            f"changed: {', '.join(printable(n) for n in (added + removed + changed)[:5])}). The images loaded are "
            f"those present when reading began; load again to include the changes.",
            stacklevel=4,
        )


# -- loading ----------------------------------------------------------------------------------------


def load_image_folder(
    root: str | os.PathLike,
    split: str = "train",
    image_size: int | Sequence[int] = 64,
    channels: int | None = None,
    cache: bool | None = None,
    in_memory: bool | None = None,
) -> Dataset:
    """A folder of images as a dataset of ``(x (C, H, W) in [0, 1], label)``.

    Args:
        root: the folder, flat or one subfolder per class (labels in sorted folder order; -1 if flat).
        split: ``"train"``, ``"test"`` (the held-out tenth, :func:`held_out`) or ``"all"``.
        image_size: each image's shorter side is scaled to fit, then the centre cropped to this size.
        channels: 1 or 3; by default 1 when every image is grayscale (with a warning saying so), else 3.
        cache: read and write the decoded images under the data root (default: yes, unless the
            ``VQVAE_FOLDER_CACHE`` environment variable is ``0``).
        in_memory: hold the decoded images in memory; by default when they need less than
            :func:`memory_budget`, else they are decoded batch by batch (with a warning saying so).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
    if channels not in (None, 1, 3):
        raise ValueError("channels must be 1 or 3 (or None: 1 for an all-grayscale folder, else 3)")
    scan = scan_folder(root)
    _warn_scan(scan)
    if not scan.names:
        raise DatasetNotFoundError(
            f"no readable images in {scan.root} ({len(scan.ignored)} other file(s) found). Put .jpg/.png/... "
            f"images there, flat or one subfolder per class."
        )
    labels, classes = scan.labels()
    size = _size_tuple(image_size)
    return load_files(scan.root, scan.names, labels, classes, size, channels, f"{scan.root.name}-{split}",
                      cache=cache, in_memory=in_memory, split=split, scan=scan, cache_tag="folder")  # fmt: skip


def load_files(
    root: Path, names: list[str], labels: list[int], classes: list[str], size: tuple[int, int],
    channels: int | None, name: str, cache: bool | None = None, in_memory: bool | None = None,
    split: str = "all", scan: FolderScan | None = None, cache_tag: str | None = None,
) -> Dataset:  # fmt: skip
    """The files ``names`` under ``root`` (with their labels) decoded through the cache into memory, or
    streamed when they do not fit; ``split`` then keeps the train or test part (:func:`held_out`).
    Food-101 comes here with its own split's files and ``split="all"``. ``cache_tag`` names the list of
    files in the cache's file name (one cache per folder, or per Food-101 split)."""
    where = str(root)
    stats = scan.stats if scan is not None else [_stat(root / n) for n in names]
    need = len(names) * (channels or 3) * size[0] * size[1]
    budget = memory_budget()
    if in_memory is False or (in_memory is None and need > budget):
        if in_memory is None:
            warnings.warn(
                f"{where}: {len(names):,} images at {channels or 3}x{size[0]}x{size[1]} need {_gib(need)} decoded, more "
                f"than the {_gib(budget)} held in memory at most (a quarter of this machine's or container's); they "
                f"are decoded batch by batch instead (make_loader starts worker processes for them on Linux; "
                f"elsewhere pass num_workers). in_memory=True forces memory.",
                stacklevel=3,
            )
        return _streamed(root, names, labels, classes, size, channels, name, split)

    decoded = _decode_files(root, names, stats, size, 3 if channels is None else channels, cache_tag or name,
                            cache_enabled(cache))  # fmt: skip
    if decoded.from_cache < len(names) and scan is not None:
        _warn_changed(scan)
    warn_failures(where, {names[i]: r for i, r in enumerate(decoded.failed) if r}, stacklevel=3)
    ok = [i for i, r in enumerate(decoded.failed) if not r]
    if not ok:
        raise DatasetNotFoundError(f"no readable images in {where}: none of its {len(names)} image file(s) could be decoded (see the warnings)")
    planes = slice(None)
    if channels is None and bool(decoded.grayscale[ok].all()):
        _warn_grayscale(where, len(ok))
        planes = slice(0, 1)
    _warn_upscaled(where, decoded.upright[ok], size)
    kept_names = [names[i] for i in ok]
    rows = [ok[r] for r in _split_rows(kept_names, split, where)]
    # one indexing copy of the decoded images (the peak is twice what the images need, not three times)
    dataset = TensorImageDataset(decoded.images[rows, planes], torch.tensor([labels[i] for i in rows], dtype=torch.long),
                                 name=name)  # fmt: skip
    dataset.names, dataset.classes = [names[i] for i in rows], list(classes)
    return dataset


def _warn_grayscale(where: str, n: int) -> None:
    warnings.warn(f"{where}: all {n} images are grayscale, so they are loaded with 1 channel; pass channels=3 to "
                  f"load them as RGB", stacklevel=4)  # fmt: skip


def _stat(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
        return (info.st_size, info.st_mtime_ns)
    except OSError:
        return (-1, -1)


def _warn_upscaled(where: str, upright: Tensor, size: tuple[int, int]) -> None:
    """One warning when images are smaller than the size asked for: scaling them up blurs them."""
    h, w = size
    small = (upright[:, 1] < h) | (upright[:, 0] < w)  # the cover scale max(h / H, w / W) is above 1
    if small.any():
        smallest = upright[small][upright[small].prod(1).argmin()].tolist()
        warnings.warn(
            f"{where}: {int(small.sum())} of {len(upright)} images are smaller than {h}x{w} (the smallest is "
            f"{smallest[1]}x{smallest[0]}) and were scaled up, which blurs them; an image_size near theirs keeps their detail",
            stacklevel=4,
        )


def _streamed(root: Path, names: list[str], labels: list[int], classes: list[str], size: tuple[int, int],
              channels: int | None, name: str, split: str) -> "ImageFolderDataset":  # fmt: skip
    """The lazy dataset: headers checked now (a file that cannot be opened would break a batch later)."""
    from tqdm.auto import tqdm

    readable, modes, failures = [], [], {}
    for i, n in enumerate(tqdm(names, desc=f"checking {root.name}", leave=False, disable=len(names) <= PROGRESS_FROM)):
        mode = _header_mode(root / n)
        if mode in ("permission", "vanished", "corrupt", "unsupported", "too_large"):
            failures[n] = mode
        else:
            readable.append(i)
            modes.append(mode)
    warn_failures(str(root), failures, stacklevel=4)
    if not readable:
        raise DatasetNotFoundError(f"no readable images in {root} ({len(names)} image file(s) found, none readable)")
    if channels is None:  # from the files' modes (a grey picture saved as RGB counts as colour here)
        channels = 1 if all(m in _GRAY_MODES for m in modes) else 3
        if channels == 1:
            _warn_grayscale(str(root), len(modes))
    kept = [names[i] for i in readable]
    rows = _split_rows(kept, split, str(root))
    return ImageFolderDataset.from_files(root, [root / kept[r] for r in rows], [labels[readable[r]] for r in rows],
                                         classes, size, channels, name)  # fmt: skip


def _header_mode(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in PLUGIN_EXTENSIONS and not format_supported(suffix):  # (registers the HEIC plugin if installed)
        return "unsupported"
    try:
        with Image.open(path) as img:
            return img.mode
    except Image.DecompressionBombError:
        return "too_large"
    except PermissionError:
        return "permission"
    except FileNotFoundError:
        return "vanished"
    except _DECODE_ERRORS:  # (a format this Python cannot read was answered above)
        return "corrupt"


# -- the lazy dataset -------------------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """Image files decoded one at a time, for folders too large for memory: any folder, ImageFolder-style
    (``root/<class>/img.png``) or flat (``root/img.png``), or a list of files (:meth:`from_files`).

    Images of every mode become ``channels``-channel images (transparency on white), scaled so that
    their shorter side fits and centre-cropped to ``image_size``. :meth:`to_tensor_dataset` decodes
    everything into memory. A file that fails when its batch is drawn raises
    :class:`~vqvae_lib.data.DatasetFileError` naming it (a batch already drawn cannot leave it out).
    """

    decodes_files = True  # BatchLoader starts worker processes for it, so that files decode while the model trains

    def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int] = 64, channels: int = 3) -> None:
        scan = scan_folder(root)
        _warn_scan(scan)
        if not scan.names:
            raise DatasetNotFoundError(f"no readable images in {scan.root}")
        labels, classes = scan.labels()
        self._setup(scan.root, scan.paths, labels, classes, image_size, channels, scan.root.name)

    @classmethod
    def from_files(
        cls, root: str | os.PathLike, paths: Sequence[Path], labels: Sequence[int], classes: Sequence[str],
        image_size: int | Sequence[int] = 64, channels: int = 3, name: str = "",
    ) -> "ImageFolderDataset":  # fmt: skip
        """The given files (found under ``root``) with their labels, not scanned."""
        dataset = cls.__new__(cls)
        dataset._setup(Path(root), list(paths), list(labels), list(classes), image_size, channels, name or Path(root).name)
        return dataset

    def _setup(self, root: Path, paths: list[Path], labels: list[int], classes: list[str], image_size, channels: int,
               name: str) -> None:  # fmt: skip
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
        return load_files(self.root, names, self.labels, self.classes, self.size, self.channels, self.name,
                          in_memory=True)  # type: ignore[arg-type]  # fmt: skip


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)
