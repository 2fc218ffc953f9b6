"""Where and how code runs: fast mode, the device, seeds, and every ``torch.distributed`` helper.

Nothing here knows about models or data, so every other module may import it (it imports only torch).
Under ``torch.distributed`` the helpers act across the processes of the run; in a single process
they return their input unchanged, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
import platform
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "FAST_ENV",
    "fast_mode",
    "pick_device",
    "cpu_name",
    "matmul_gflops",
    "seed_everything",
    "unwrap",
    "eval_mode",
    "world",
    "is_main_process",
    "all_reduce_sum",
    "all_gather_rows",
    "broadcast",
    "mean_over_ranks",
    "init_distributed",
    "end_distributed",
    "wrap_distributed",
    "replica_difference",
]

FAST_ENV = "VQVAE_FAST"


def fast_mode() -> bool:
    """True when ``VQVAE_FAST`` is set to 1/true/yes: notebooks then train for a few hundred steps."""
    return os.environ.get(FAST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple's MPS, then the CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), for the machine line printed beside timings and
    stored with committed models; elsewhere what ``platform`` knows (often only the architecture)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of an ``n x n`` matrix product on the CPU at the current thread count: the speed
    reported beside every timing, since the same run takes 1.6x longer on some CPUs than on others."""
    import time

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or other ``.module``) wrapper, else ``model``."""
    return getattr(model, "module", model)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it was in (even after an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of a distributed run, ``(0, 1)`` otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return world()[0] == 0


def _distributed() -> bool:
    return world()[1] > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over the processes, in place."""
    if _distributed():
        dist.all_reduce(t)
    return t


def all_gather_rows(flat: Tensor) -> Tensor:
    """Every rank's rows, concatenated in rank order (as one process would hold the whole batch)."""
    if not _distributed():
        return flat
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)


def broadcast(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank, in place."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def init_distributed() -> tuple[int, int, torch.device | None]:
    """Join the ``torchrun`` process group if there is one: ``(rank, world_size, device or None)``.
    NCCL with one GPU per process where there are GPUs, gloo on the CPU otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), size, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), size, torch.device("cpu")


def end_distributed() -> None:
    """Wait for every process, then leave the process group. Drop DistributedDataParallel wrappers
    first: each holds the process group, and one freed later, at interpreter exit, tears the group's
    threads down mid-shutdown (``terminate called without an active exception``, seen under load)."""
    if _distributed():
        import gc

        gc.collect()  # DDP wrappers in reference cycles go now, while the group still works
        dist.barrier()
        dist.destroy_process_group()


def wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when this process is one of several (gradients are then
    averaged over the processes in backward), else ``model`` itself."""
    if not _distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def replica_difference(model: nn.Module) -> float:
    """Largest difference of any floating weight or buffer between the processes (0 when they agree)."""
    if not _distributed():
        return 0.0
    flat = torch.cat([t.detach().double().flatten().cpu() for t in model.state_dict().values() if t.is_floating_point()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return float((high - low).max())


def mean_over_ranks(logs: dict[str, float]) -> dict[str, float]:
    """Logged numbers averaged over the processes of a distributed run (one small all-reduce)."""
    size = world()[1]
    if size == 1:
        return logs
    values = all_reduce_sum(torch.tensor(list(logs.values()), dtype=torch.float64)) / size
    return dict(zip(logs, values.tolist()))
