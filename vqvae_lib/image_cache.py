"""The cache of decoded images: one file per image folder (or Food-101 split), image size and channels,
under :func:`vqvae_lib.paths.cache_dir` (the data root's ``cache/`` unless ``VQVAE_CACHE_DIR`` says
otherwise), never in the folder itself.

A cache records each file's name, ``(bytes, modification time in ns)`` and what decoding it gave (the
pixels, or why it failed). :mod:`vqvae_lib.image_folder` takes a file from it only when its size and
time are unchanged and it decoded; everything else is decoded again and the cache rewritten. A file
that is corrupt, of another version or of another kind is rebuilt with a warning, never trusted: it is
read weights-only (tensors, strings and numbers), so it cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import write_atomically
from .paths import cache_dir

__all__ = ["CACHE_FORMAT", "FOLDER_CACHE_ENV", "cache_enabled", "cache_path", "read_cache", "write_cache"]

FOLDER_CACHE_ENV = "VQVAE_FOLDER_CACHE"  # "0", "off", "no" or "false": never read or write the cache
# bump when decoding changes what a file becomes, so that caches written before are rebuilt, not trusted
CACHE_FORMAT = "vqvae_lib decoded images v1 (JPEG draft x2, Lanczos, EXIF upright)"


def cache_enabled(cache: bool | None) -> bool:
    if cache is not None:
        return cache
    return os.environ.get(FOLDER_CACHE_ENV, "1").strip().lower() not in ("0", "off", "no", "false")


def cache_path(root: Path, size: tuple[int, int], channels: int, tag: str) -> Path:
    """``<cache dir>/image-folders/<folder>-<tag>-<H>x<W>-<C>c-<hash of folder, size, tag>.pt``
    (:func:`vqvae_lib.paths.cache_dir`: under the data root unless ``VQVAE_CACHE_DIR`` says otherwise)."""
    key = f"{root.resolve()}|{size}|{channels}|{tag}".encode("utf-8", "surrogateescape")
    name = (f"{_file_name_part(root.resolve().name)}-{_file_name_part(tag)}-{size[0]}x{size[1]}-{channels}c-"
            f"{hashlib.sha256(key).hexdigest()[:12]}.pt")  # fmt: skip
    return cache_dir() / "image-folders" / name


def _file_name_part(text: str) -> str:
    """Letters, digits, ``-`` and ``_`` only (the rest becomes ``_``): safe in a file name on every system."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in text)[:40]


def read_cache(path: Path, size: tuple[int, int], channels: int) -> dict[str, Any] | None:
    """The cache's content if it is a cache of this kind that holds together; otherwise ``None``, with
    a warning when a file was there (a corrupt or foreign file is rebuilt, never trusted)."""
    if not path.exists():
        return None
    try:
        # weights_only: tensors, strings and numbers only; a file crafted to run code is refused
        content = torch.load(path, map_location="cpu", weights_only=True)
        _check_cache(content, size, channels)
        return content
    except Exception as err:
        warnings.warn(f"the image cache {path} is corrupt or not this library's ({type(err).__name__}: {err}); "
                      f"it is rebuilt from the images", stacklevel=5)  # fmt: skip
        return None


def _check_cache(content: Any, size: tuple[int, int], channels: int) -> None:
    if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
        raise ValueError("not a decoded-image cache of this version")
    names, stats, failed, images = content["names"], content["stats"], content["failed"], content["images"]
    n = len(names)
    if not (isinstance(names, list) and all(isinstance(x, str) for x in names)):
        raise ValueError("names are not strings")
    if not (isinstance(stats, list) and len(stats) == n and all(isinstance(s, (list, tuple)) and len(s) == 2 for s in stats)):
        raise ValueError("file stats do not match the names")
    if not (isinstance(failed, list) and len(failed) == n and all(isinstance(x, str) for x in failed)):
        raise ValueError("failures do not match the names")
    if not (isinstance(images, Tensor) and images.dtype == torch.uint8 and tuple(images.shape) == (n, channels, *size)):
        raise ValueError(f"images are not {n} uint8 images of {channels}x{size[0]}x{size[1]}")
    for key in ("upright", "grayscale"):
        if not (isinstance(content[key], Tensor) and len(content[key]) == n):
            raise ValueError(f"{key} does not match the names")


def write_cache(path: Path, content: dict[str, Any]) -> None:
    """Written to a temporary file of its own, then renamed: an interrupted write never leaves half a
    cache, and the processes of a distributed run, which all load the folder, never write into one file."""
    try:
        write_atomically(content, path)
    except Exception as err:  # a read-only data root, a full disk: the images are loaded all the same
        warnings.warn(f"could not write the image cache {path} ({type(err).__name__}: {err}); the next load "
                      f"decodes again", stacklevel=5)  # fmt: skip
