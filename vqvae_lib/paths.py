"""Where things live: the project, the data root, your checkpoints and the committed pretrained ones.

The data root, first match wins:
  1. a ``root`` argument;
  2. the ``VQVAE_DATA_ROOT`` environment variable;
  3. ``data/`` in the repository this package was installed from (found from the package itself, so
     notebooks in any working directory agree), or ``~/.cache/vqvae_lib/data`` for a non-editable install.

Checkpoints that the notebooks train go to ``VQVAE_CHECKPOINT_DIR`` or ``data/checkpoints``; the
full-mode ones committed with the repository are in ``data/pretrained``. Decoded images of your folders
are cached in ``VQVAE_CACHE_DIR`` or ``<data root>/cache``, never in the folders themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DATA_ROOT_ENV",
    "CHECKPOINT_DIR_ENV",
    "project_dir",
    "data_root",
    "checkpoint_dir",
    "cache_dir",
    "pretrained_dir",
    "find_checkpoint",
    "project_relative",
]

DATA_ROOT_ENV = "VQVAE_DATA_ROOT"
CHECKPOINT_DIR_ENV = "VQVAE_CHECKPOINT_DIR"
CACHE_DIR_ENV = "VQVAE_CACHE_DIR"


def project_dir() -> Path:
    """The repository this package was installed from (editable install), or
    ``~/.cache/vqvae_lib`` when it was installed as a plain package."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists() and (repo / "vqvae_lib").is_dir():
        return repo
    return Path.home() / ".cache" / "vqvae_lib"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from and downloaded to (see the module docstring)."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return project_dir() / "data"


def checkpoint_dir() -> Path:
    """Where the notebooks save the models they train: ``VQVAE_CHECKPOINT_DIR`` or ``data/checkpoints``."""
    env = os.environ.get(CHECKPOINT_DIR_ENV)
    return Path(env).expanduser() if env else project_dir() / "data" / "checkpoints"


def cache_dir() -> Path:
    """Where decoded images are cached: ``VQVAE_CACHE_DIR`` or ``<data root>/cache``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else data_root() / "cache"


def pretrained_dir() -> Path:
    """The checkpoints committed with the repository (``data/pretrained``), trained in full mode."""
    return project_dir() / "data" / "pretrained"


def find_checkpoint(name: str, prefer: str = "own", made_by: str | None = None) -> Path:
    """``<name>.pt`` from your own runs (:func:`checkpoint_dir`) or the committed pretrained ones.

    ``prefer="own"`` takes your run when there is one, ``"pretrained"`` the committed one. A missing
    checkpoint raises ``FileNotFoundError`` saying where it looked and, with ``made_by`` (e.g. the
    notebook that trains it), what makes it.
    """
    own, pretrained = checkpoint_dir() / f"{name}.pt", pretrained_dir() / f"{name}.pt"
    order = [own, pretrained] if prefer == "own" else [pretrained, own]
    for path in order:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"no checkpoint '{name}': looked for {own} and {pretrained}. "
        + (f"Run {made_by} to train it (fast mode takes about a minute)." if made_by else "Train it first.")
    )


def project_relative(path: str | os.PathLike) -> Path:
    """``path`` relative to the repository (or to the data root) when it lies inside it, else as it is:
    what the notebooks print, so that their committed outputs name no folder of the machine that ran them."""
    path = Path(path).resolve()
    for base in (project_dir(), data_root()):
        try:
            return path.relative_to(base.resolve())
        except ValueError:
            continue
    return path
