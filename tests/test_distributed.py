"""Multi-process training (torchrun, 2 CPU processes, gloo) on real MNIST: what DistributedDataParallel
training must guarantee, checked in float64 where each guarantee is exact, and the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from vqvae_lib import read_checkpoint

SMALL = [
    "--preset", "mnist", "--train-subset", "1024", "--eval-subset", "256", "--batch-size", "64",
    "--hidden-channels", "16", "--residual-hidden-channels", "8", "--eval-every", "10", "--warmup-steps", "5",
    "--checkpoint-every", "0",
]  # fmt: skip
EVAL = re.compile(r"step\s+(\d+) \|\s+[\d.]+ s training \| test mse ([\d.]+) nmse ([\d.]+)")
CHECKS = Path(__file__).with_name("ddp_checks.py")

# Tolerances for the float64 comparisons of tests/ddp_checks.py (relative: max |a - b| / max |b|).
# They separate two scales, not bound an error: summation order in float64 (unit roundoff 1.1e-16;
# a sum of the 64 x 784 terms of one step in another order moves by n * 1.1e-16 = 6e-12 of the sum
# of their magnitudes at worst, and measured 4e-15 for the gradients and 1e-15 after 20 steps, when
# the feedback through later gradients, EMA updates and argmin has had its say), against what a
# broken set-up does (one half of the batch's gradients or codebook statistics: measured 0.02 to
# 0.9). float32's own noise would already be about 1e-7. So: five orders of magnitude above the
# float64 measurements, and more than three below float32 noise.
ONE_STEP = 1e-10
WHOLE_RUN = 1e-9


def _run(args: list[str], real_root, torchrun: bool = False) -> str:
    # CPU processes (gloo) even on a machine with GPUs, where the command line would pick NCCL
    env = {**os.environ, "VQVAE_DATA_ROOT": str(real_root), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [sys.executable]
    done = subprocess.run([*launcher, "-m", "vqvae_lib.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_help_documents_every_config_field():
    done = subprocess.run([sys.executable, "-m", "vqvae_lib.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for option in ("--preset", "--batch-size", "--num-embeddings", "--dead-code-threshold", "--resume", "--amp", "torchrun"):
        assert option in done.stdout, option


def _distributed_report(real_root, tmp_path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    report = tmp_path / "report.json"
    for launcher, mode, path in (
        ([sys.executable], "reference", f"{report}.reference"),
        ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "distributed", report),
    ):
        done = subprocess.run([*launcher, str(CHECKS), mode, str(path), str(real_root)], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"{mode}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(report.read_text())


def test_distributed_training_is_the_single_process_training(real_root, tmp_path):
    """2 processes x 32 images against 1 process x 64 images, each guarantee where it is exact."""
    r = _distributed_report(real_root, tmp_path)
    assert r["world_size"] == 2
    # each process reads its own half of every global batch; together, the single process's batch
    assert r["slices_differ"] and r["slices_union_is_the_global_batch"], r
    # the replicas stay bitwise identical to each other (DDP averages gradients; codebook updates
    # are computed from all-reduced statistics and broadcast)
    assert r["replica_difference"] == 0.0, r
    # k-means initialisation and dead-code restarts work on the gathered global batch: the same rows in
    # the same order through the same code, so bitwise equal
    assert r["restarted_codes"] == 7 and r["data_init"] == 0.0 and r["restarts"] == 0.0, r
    # the EMA statistics of one step are the global batch's: counts are integers (exact), sums in
    # another order
    assert r["usage_counts_equal"] and r["ema_cluster_size"] == 0.0 and r["ema_embed_sum"] <= ONE_STEP, r
    # the all-reduced gradients of one step are the single process's gradients of the whole batch
    assert r["gradients"] <= ONE_STEP, r
    # a whole run of train() (dead-code restarts on the way) ends where the single-process run ends,
    # the logged losses are the global batch's, and the test metrics are reduced over the processes
    assert r["restarted_codes_in_run"] > 0, r
    assert r["run_weights"] <= WHOLE_RUN and r["history_total"] <= WHOLE_RUN and r["run_eval"] <= WHOLE_RUN, r
    assert r["run_usage_counts_equal"] and r["run_eval_codes_used_equal"], r


def test_command_line_under_torchrun_writes_and_resumes_one_checkpoint(real_root, tmp_path):
    """The command line's own plumbing with 2 processes: it reports identical replicas, evaluates on
    schedule, rank 0 alone writes the checkpoint, and a resumed run continues it."""
    out = _run([*SMALL, "--steps", "20", "--out", str(tmp_path / "ddp.pt")], real_root, torchrun=True)
    assert "2 process(es) on cpu" in out
    assert "evaluate on 256 of mnist test (10,000 images)" in out  # --eval-subset is what is evaluated
    assert "max weight difference across 2 processes: 0" in out, out
    assert [s for s, _, _ in EVAL.findall(out)] == ["10", "20"], out
    assert read_checkpoint(tmp_path / "ddp.pt").step == 20

    _run([*SMALL, "--steps", "30", "--out", str(tmp_path / "ddp.pt"), "--resume"], real_root, torchrun=True)
    resumed = read_checkpoint(tmp_path / "ddp.pt")
    assert resumed.step == 30 and len(resumed.history["total"]) == 30
    assert not list(tmp_path.glob(".*.tmp")), "a temporary checkpoint file was left behind"
