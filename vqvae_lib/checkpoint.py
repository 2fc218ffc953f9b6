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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .runtime import unwrap

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(tmp)
        if unsafe:  # e.g. a NumPy scalar or a dataclass in `extra`: the file could never be loaded back
            raise CheckpointError(
                f"not saved: the checkpoint would hold {', '.join(unsafe)}, which load_checkpoint refuses; "
                f"keep history and extra to tensors, numbers, strings and containers"
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_REQUIRED_KEYS = ("format", "model_class", "model_config", "model_state", "step")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, after checking that it is one of ours.

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
    return state


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild (or fill) a model from a checkpoint.

    With ``model=None`` the model is built from the stored config. With a model, its config must
    equal the stored one; otherwise :class:`CheckpointError` lists the differences. The returned
    model carries ``checkpoint_step`` and ``checkpoint_history`` for reading.
    """
    state = read_checkpoint(path)
    cls = _model_class(Path(path), state["model_class"])
    cls_name, config = cls.__name__, state["model_config"]
    if model is None:
        try:
            model = cls(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its model_config does not build a {cls_name} ({err})") from err
    else:
        target = unwrap(model)
        if type(target) is not cls:
            raise CheckpointError(f"{path} holds a {cls_name}, not a {type(target).__name__}")
        own = dict(getattr(target, "config", {}))
        diffs = {k: (config.get(k), own.get(k)) for k in set(config) | set(own) if config.get(k) != own.get(k)}
        if diffs:
            lines = "\n".join(f"  {k}: checkpoint {a!r}, model {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise CheckpointError(
                f"{path} was saved from a model with a different configuration:\n{lines}\n"
                f"Load it with load_checkpoint(path) (no model) to rebuild the saved one."
            )
    target = unwrap(model)
    try:
        target.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model's weights: {err}") from err
    if optimizer is not None and state.get("optimizer_state") is not None:
        optimizer.load_state_dict(state["optimizer_state"])
    if scheduler is not None and state.get("scheduler_state") is not None:
        scheduler.load_state_dict(state["scheduler_state"])
    target.checkpoint_step = state["step"]
    target.checkpoint_history = state.get("history")
    return model.to(device)
