"""Checkpoints that rebuild their own model: the config is stored beside the weights.

Writes are atomic: the checkpoint goes to a temporary file in the same folder, which then replaces
the old one with ``os.replace``. An interrupt (Ctrl-C, a crash, a full disk) at any moment leaves
either the previous checkpoint or the new one, never a truncated file.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "CheckpointError",
    "checkpoint_dir",
    "find_checkpoint",
    "load_checkpoint",
    "pretrained_dir",
    "read_checkpoint",
    "register_model_class",
    "save_checkpoint",
]

FORMAT = "vqvae_lib.checkpoint/1"
CHECKPOINT_DIR_ENV = "VQVAE_CHECKPOINT_DIR"
# which notebook trains the model that find_checkpoint(name) looks for
MADE_BY = {
    "mnist": "04_mnist.ipynb",
    "cifar10": "05_cifar10.ipynb",
    "food101": "06_food101_and_your_own_images.ipynb",
    "mnist_prior": "08_prior_and_sampling.ipynb",
    "cifar10_prior": "08_prior_and_sampling.ipynb",
}
_MODEL_CLASSES: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(RuntimeError):
    """A file is not a checkpoint of ours, or does not fit the model it is loaded into."""


def register_model_class(cls: type) -> type:
    """Let checkpoints rebuild instances of ``cls`` (which must have a ``config`` dict of its init args)."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def checkpoint_dir() -> Path:
    """Where the notebooks save the models they train: ``VQVAE_CHECKPOINT_DIR`` or ``data/checkpoints``."""
    from .data import project_dir

    env = os.environ.get(CHECKPOINT_DIR_ENV)
    return Path(env).expanduser() if env else project_dir() / "data" / "checkpoints"


def pretrained_dir() -> Path:
    """The checkpoints committed with the repository (``data/pretrained``), trained in full mode."""
    from .data import project_dir

    return project_dir() / "data" / "pretrained"


def find_checkpoint(name: str, prefer: str = "own") -> Path:
    """``<name>.pt`` from your own runs (:func:`checkpoint_dir`) or the committed pretrained ones.

    ``prefer="own"`` takes your run when there is one, ``"pretrained"`` the committed one. A missing
    checkpoint raises ``FileNotFoundError`` naming the notebook that makes it.
    """
    own, pretrained = checkpoint_dir() / f"{name}.pt", pretrained_dir() / f"{name}.pt"
    order = [own, pretrained] if prefer == "own" else [pretrained, own]
    for path in order:
        if path.exists():
            return path
    notebook = MADE_BY.get(name, "the notebook that trains it")
    raise FileNotFoundError(
        f"no checkpoint '{name}': looked for {own} and {pretrained}. Run notebooks/{notebook} "
        f"to train it (fast mode takes about a minute)."
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel / compiled wrappers


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
    model = _unwrap(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "model_class": type(model).__name__,
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
    from . import model as _model_module  # noqa: F401  (registers VQVAE)

    state = read_checkpoint(path)
    cls_name, config = state["model_class"], state["model_config"]
    if model is None:
        if cls_name not in _MODEL_CLASSES:
            raise CheckpointError(f"{path} holds a {cls_name}, which this version of vqvae_lib cannot build")
        try:
            model = _MODEL_CLASSES[cls_name](**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its model_config does not build a {cls_name} ({err})") from err
    else:
        target = _unwrap(model)
        if type(target).__name__ != cls_name:
            raise CheckpointError(f"{path} holds a {cls_name}, not a {type(target).__name__}")
        own = dict(getattr(target, "config", {}))
        diffs = {k: (config.get(k), own.get(k)) for k in set(config) | set(own) if config.get(k) != own.get(k)}
        if diffs:
            lines = "\n".join(f"  {k}: checkpoint {a!r}, model {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise CheckpointError(
                f"{path} was saved from a model with a different configuration:\n{lines}\n"
                f"Load it with load_checkpoint(path) (no model) to rebuild the saved one."
            )
    target = _unwrap(model)
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
