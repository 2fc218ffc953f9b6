"""Checkpoints that rebuild their own model: the config is stored beside the weights.

Writes are atomic: the checkpoint goes to a temporary file in the same folder, which then replaces
the old one with ``os.replace``. An interrupt (Ctrl-C, a crash, a full disk) at any moment leaves
either the previous checkpoint or the new one, never a truncated file.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .runtime import unwrap

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "folder_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "write_atomically",
]

FORMAT = "vqvae_lib.checkpoint/1"
# Classes are named by import path, "module:qualname" (as diffusers' configs do); checkpoints written
# before that name the bare class, which these map.
_OLD_NAMES = {"VQVAE": "vqvae_lib.model:VQVAE", "GatedPixelCNN": "vqvae_lib.prior:GatedPixelCNN"}


class CheckpointError(RuntimeError):
    """A file is not a checkpoint of ours, or does not fit the model it is loaded into."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _model_class(path: Path, name: str) -> type:
    """The class a checkpoint names. Only this package's ``nn.Module`` classes: importing an arbitrary
    module and calling whatever it names with the stored config would run code from the file."""
    name = _OLD_NAMES.get(name, name)
    module_name, _, qualname = name.partition(":")
    if not (module_name == "vqvae_lib" or module_name.startswith("vqvae_lib.")) or not qualname:
        raise CheckpointError(f"{path} names the class {name!r}, which is not one of vqvae_lib's models")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path} holds a {name}, which this version of vqvae_lib cannot build") from err
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"{path} names {name}, which is not a model class")
    return obj


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    history: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Atomically write model config + weights (+ optimizer, scheduler, step, history, RNG state)."""
    model = unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "model_class": _class_path(type(model)),
        "model_config": dict(model.config),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "history": history,
        "rng_state": torch.get_rng_state(),
        "extra": extra or {},
    }
    return write_atomically(state, path, check=_refuse_unsafe_globals)


def _refuse_unsafe_globals(written: Path) -> None:
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(written)
    if unsafe:  # e.g. a NumPy scalar or a dataclass in `extra`: the file could never be loaded back
        raise CheckpointError(
            f"not saved: the checkpoint would hold {', '.join(unsafe)}, which load_checkpoint refuses; "
            f"keep history and extra to tensors, numbers, strings and containers"
        )


def write_atomically(obj: Any, path: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file of its own in the same folder (flushed
    to disk, then ``os.replace``-d over ``path``): an interrupt leaves the old file or the new one, never
    half of one, and processes writing the same path never share a temporary file. ``check(temporary)``
    may refuse the written file by raising, before it replaces anything. On any error the temporary file
    is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # this process's own name (a random part too, for processes of other machines on a shared disk);
    # opened like any new file, so it gets the usual permissions (mkstemp's are owner-only)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_REQUIRED_KEYS = ("format", "model_class", "model_config", "model_state", "step")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, read and checked once (:func:`read_checkpoint`); nothing built yet.

    ``build()`` makes a new model from the stored class and config; ``restore(model, optimizer,
    scheduler)`` fills existing ones (resuming a run). ``step``, ``history`` and ``extra`` are there to
    read, and ``rng_state`` is the CPU random state at the moment of saving.
    """

    path: Path
    model_class: str
    model_config: dict[str, Any]
    model_state: dict[str, Any]
    step: int
    history: dict | None = None
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    rng_state: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """A new model of the stored class and config, with the stored weights, on ``device``."""
        cls = _model_class(self.path, self.model_class)
        try:
            model = cls(**self.model_config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{self.path}: its model_config does not build a {cls.__name__} ({err})") from err
        self._load_weights(model)
        return model.to(device)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> nn.Module:
        """Load the weights into ``model`` (and the optimizer's and scheduler's states, when both the file
        and the call have them). The model's class and config must be the stored ones; otherwise
        :class:`CheckpointError` lists the differences."""
        cls = _model_class(self.path, self.model_class)
        target = unwrap(model)
        if type(target) is not cls:
            raise CheckpointError(f"{self.path} holds a {cls.__name__}, not a {type(target).__name__}")
        # a field added to the class after the file was written counts as its default there
        defaults = cls.config_defaults() if hasattr(cls, "config_defaults") else {}
        own, stored = dict(getattr(target, "config", {})), {**defaults, **self.model_config}
        diffs = {k: (stored.get(k), own.get(k)) for k in set(stored) | set(own) if stored.get(k) != own.get(k)}
        if diffs:
            lines = "\n".join(f"  {k}: checkpoint {a!r}, model {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise CheckpointError(
                f"{self.path} was saved from a model with a different configuration:\n{lines}\n"
                f"Load it with load_checkpoint(path) (no model) to rebuild the saved one."
            )
        self._load_weights(target)
        if optimizer is not None and self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None and self.scheduler_state is not None:
            scheduler.load_state_dict(self.scheduler_state)
        return model

    def _load_weights(self, model: nn.Module) -> None:
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as err:
            raise CheckpointError(f"{self.path} does not fit this model's weights: {err}") from err


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file once and check that it is a complete one of ours.

    The file is read with ``torch.load(weights_only=True)``: its pickle may hold tensors, numbers,
    strings and plain containers, nothing else, so opening a checkpoint someone sent you never runs
    code from it. Anything that is not a complete checkpoint of this library raises
    :class:`CheckpointError` saying what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL (\S+)", str(err))  # "Unsupported global: GLOBAL io.open", "... GLOBAL posix.system whose module ..."
        if named is None:  # not a pickle of ours at all (a text file, another format)
            reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(err), re.S)
            raise CheckpointError(
                f"{path} could not be read as a checkpoint ({reason.group(1).strip() if reason else 'not a PyTorch file'})"
            ) from err
        raise CheckpointError(
            f"{path} refers to {named.group(1)}, which is not a tensor or plain data (numbers, strings, containers), so it "
            f"was not opened (opening it could run code from it). Load it with torch.load(..., "
            f"weights_only=False) only if you trust where it came from."
        ) from err
    except Exception as err:
        raise CheckpointError(f"{path} could not be read as a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vqvae_lib checkpoint (no '{FORMAT}' format marker)")
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is an incomplete vqvae_lib checkpoint: it lacks {', '.join(missing)}")
    return Checkpoint(
        path=path,
        model_class=state["model_class"],
        model_config=dict(state["model_config"]),
        model_state=state["model_state"],
        step=int(state["step"]),
        history=state.get("history"),
        optimizer_state=state.get("optimizer_state"),
        scheduler_state=state.get("scheduler_state"),
        rng_state=state.get("rng_state"),
        extra=state.get("extra") or {},
    )


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The model in a checkpoint: rebuilt from its stored config (``model=None``), or loaded into
    ``model`` (whose config must equal the stored one). For the step, history or extra data as
    well, read the file once with :func:`read_checkpoint` and call ``build()`` or ``restore()`` on it."""
    checkpoint = read_checkpoint(path)
    if model is None:
        return checkpoint.build(device)
    return checkpoint.restore(model, optimizer, scheduler).to(device)


def folder_checkpoints(directory: str | os.PathLike) -> list[tuple[Path, Checkpoint]]:
    """The checkpoints in ``directory`` that record an image folder (``extra["image_folder"]`` and
    ``extra["image_size"]``: notebook 7 with ``IMAGE_FOLDER`` set and ``python -m vqvae_lib.cli --folder``
    write them), newest first, each read once. A ``.pt`` file that is not a readable checkpoint is left out
    with a warning that names it and says why; a missing directory holds none."""
    found = []
    for path in sorted(Path(directory).expanduser().glob("*.pt")):
        if not path.is_file():  # a FIFO or folder named *.pt: never opened
            continue
        try:
            saved = read_checkpoint(path)
        except CheckpointError as unreadable:
            warnings.warn(f"left out {path.name}: {unreadable}", stacklevel=2)
            continue
        if "image_folder" in saved.extra and "image_size" in saved.extra:
            found.append((path, saved))
    return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)
