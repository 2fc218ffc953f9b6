"""What distributed training must guarantee, measured in 2 CPU processes; run by
``tests/test_distributed.py``: first ``python tests/ddp_checks.py reference REPORT.reference DATA_ROOT``
(one process), then ``torchrun --nproc_per_node 2 tests/ddp_checks.py distributed REPORT DATA_ROOT``.

Each check compares the distributed computation with the single-process one (a separate process: once
a process group exists, every collective in the library takes part in it) on the same real MNIST
images, in float64: summation order (all-reduce, oneDNN's kernel choice, thread
count) then moves results by about 1e-16 relative per operation instead of float32's 1e-7, so the
comparison measures the code and not the CPU. Rank 0 writes the numbers as JSON; the test holds the
tolerances and says why each is what it is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from vqvae_lib import TrainConfig, load_dataset, loss_terms, make_loader, train
from vqvae_lib.runtime import all_gather_rows, end_distributed, unwrap, wrap_distributed

STEPS = 20
GLOBAL_BATCH = 64
CONFIG = TrainConfig.preset(
    "mnist", hidden_channels=16, residual_hidden_channels=8, batch_size=GLOBAL_BATCH, lr=2e-3,
    warmup_steps=5, dead_code_threshold=3,  # low, so that dead-code restarts happen within the run
)  # fmt: skip


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / scale if scale else float((a - b).abs().max())


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest relative difference over the tensors of ``a`` (compared with ``b``'s), and where."""
    diffs = {k: _relative(a[k].double(), b[k].double()) for k in a}
    name = max(diffs, key=diffs.get)
    return diffs[name], name


def _fresh_model() -> torch.nn.Module:
    return CONFIG.build_model().double()  # build_model seeds: every process and both runs start equal


def check_slices(data, rank: int, world: int) -> dict:
    """Each process gets its own slice of every global batch, and together they get the batch one
    process would train on."""
    mine = make_loader(data, GLOBAL_BATCH // world, seed=CONFIG.seed, rank=rank, world_size=world)
    whole = make_loader(data, GLOBAL_BATCH, seed=CONFIG.seed)
    union_equal, slices_differ = True, True
    for i, ((x_mine, _), (x_whole, _)) in enumerate(zip(mine, whole)):
        if i == 4:
            break
        gathered = all_gather_rows(x_mine)  # every rank's slice, in rank order
        union_equal &= torch.equal(gathered, x_whole)
        first, second = gathered.chunk(world)
        slices_differ &= not torch.equal(first, second)
    return {"slices_union_is_the_global_batch": union_equal, "slices_differ": slices_differ}


def one_step(data, rank: int, world: int) -> dict[str, torch.Tensor]:
    """One training step's codebook initialisation (k-means), dead-code restarts, EMA statistics,
    usage counts and gradients (averaged over the processes, in a distributed run)."""
    x_whole = next(iter(make_loader(data, GLOBAL_BATCH, seed=CONFIG.seed)))[0].double()
    x = x_whole.chunk(world)[rank]
    model = wrap_distributed(_fresh_model(), torch.device("cpu"))
    core = unwrap(model)
    out = {}
    with torch.no_grad():
        torch.manual_seed(1)
        core.quantizer.init_from_data(core.encoder(x))
        out["data_init"] = core.quantizer.codebook.clone()
        core.quantizer.steps_unused[:7] = core.quantizer.dead_code_threshold
        torch.manual_seed(2)
        out["restarted_codes"] = torch.tensor(core.quantizer.restart_dead_codes(core.encoder(x)))
        out["restarts"] = core.quantizer.codebook.clone()
    torch.manual_seed(3)
    x_hat, q = model(x)
    loss_terms(x, x_hat, q, core.beta)["total"].backward()
    out["ema_cluster_size"] = core.quantizer.ema_cluster_size.clone()
    out["ema_embed_sum"] = core.quantizer.ema_embed_sum.clone()
    out["usage_counts"] = core.quantizer.usage_counts.clone()
    out.update({f"grad.{n}": p.grad.clone() for n, p in core.named_parameters()})
    return out


def whole_run(data, test, rank: int, world: int) -> dict[str, torch.Tensor]:
    """``train`` for STEPS steps: final weights and buffers, the logged losses and the test metrics."""
    model = wrap_distributed(_fresh_model(), torch.device("cpu"))
    loader = make_loader(data, GLOBAL_BATCH // world, seed=CONFIG.seed, rank=rank, world_size=world)
    config = replace(CONFIG, steps=STEPS, steps_fast=None, device="cpu", eval_every=0, checkpoint_every=0)
    ran = train(model, loader, config, eval_loader=make_loader(test, 64, shuffle=False), progress=False)
    core = unwrap(model)
    out = {f"state.{k}": v.clone() for k, v in core.state_dict().items()}
    out["history_total"] = torch.tensor(ran.history["total"], dtype=torch.float64)
    out.update({f"eval.{k}": torch.tensor(float(ran.final_eval[k]), dtype=torch.float64)
                for k in ("mse", "nmse", "psnr", "perplexity", "codes_used")})  # fmt: skip
    out["restarted_codes_in_run"] = torch.tensor(core.quantizer.restarted_codes)
    if world > 1:  # the replicas' largest disagreement on any weight or buffer
        flat = torch.cat([t.double().flatten() for t in core.state_dict().values()])
        low, high = flat.clone(), flat.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        out["replica_difference"] = (high - low).max()
    return out


def compare(ran: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """The report: relative differences (floats) or equality (integers) for each quantity."""
    grads = {k: v for k, v in ran.items() if k.startswith("grad.")}
    weights = {k: v for k, v in ran.items() if k.startswith("state.") and v.is_floating_point()}
    report = {
        "replica_difference": float(ran["replica_difference"]),
        "restarted_codes": int(ran["restarted_codes"]),
        "restarted_codes_in_run": int(ran["restarted_codes_in_run"]),
        "usage_counts_equal": torch.equal(ran["usage_counts"], reference["usage_counts"]),
        "run_usage_counts_equal": torch.equal(ran["state.quantizer.usage_counts"], reference["state.quantizer.usage_counts"]),
        "run_eval_codes_used_equal": bool(ran["eval.codes_used"] == reference["eval.codes_used"]),
    }
    for name in ("data_init", "restarts", "ema_cluster_size", "ema_embed_sum", "history_total"):
        report[name] = _relative(ran[name], reference[name])
    report["gradients"], report["gradients_worst"] = _worst(grads, reference)
    report["run_weights"], report["run_weights_worst"] = _worst(weights, reference)
    report["run_eval"] = max(_relative(ran[f"eval.{k}"], reference[f"eval.{k}"]) for k in ("mse", "nmse", "psnr", "perplexity"))
    return report


def main(mode: str, path: str, data_root: str) -> None:
    """``reference PATH``: one process, saves its results to PATH. ``distributed PATH``: under torchrun,
    compares with the reference saved beside PATH and writes the JSON report to PATH."""
    torch.set_num_threads(1)
    if mode == "distributed":  # gloo on the CPU even where there is a GPU: the checks are about the code
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if mode == "distributed" else (0, 1)
    data = load_dataset("mnist", "train", root=data_root).subset(1024, seed=0)
    test = load_dataset("mnist", "test", root=data_root).subset(256, seed=0)
    results = {**one_step(data, rank, world), **whole_run(data, test, rank, world)}
    if mode == "reference":
        torch.save(results, path)
        return
    report = {"world_size": world, **check_slices(data, rank, world)}
    if rank == 0:
        report.update(compare(results, torch.load(path + ".reference", weights_only=True)))
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
    end_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
