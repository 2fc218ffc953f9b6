"""The command line and multi-process training: torchrun with 2 CPU processes (gloo) on real MNIST."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch

from vqvae_lib import load_checkpoint, read_checkpoint

# The optimisation settings are pinned here rather than taken from the preset: the tolerance below
# is for float summation order, and a higher learning rate or a faster codebook (the tuned MNIST
# preset's 4e-3 and 0.95) amplifies those last-bit differences over 20 steps beyond it.
SMALL = [
    "--preset", "mnist", "--train-subset", "1024", "--eval-subset", "256", "--batch-size", "64",
    "--hidden-channels", "16", "--residual-hidden-channels", "8", "--eval-every", "10", "--warmup-steps", "5",
    "--checkpoint-every", "0", "--lr", "2e-3", "--decay", "0.99",
]  # fmt: skip
EVAL = re.compile(r"step\s+(\d+) \|\s+[\d.]+ s training \| test mse ([\d.]+) nmse ([\d.]+)")


def _run(args: list[str], real_root, torchrun: bool = False) -> str:
    env = {**os.environ, "VQVAE_DATA_ROOT": str(real_root), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [sys.executable]
    done = subprocess.run([*launcher, "-m", "vqvae_lib.train", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_help_documents_every_config_field():
    done = subprocess.run([sys.executable, "-m", "vqvae_lib.train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for option in ("--preset", "--batch-size", "--num-embeddings", "--dead-code-threshold", "--resume", "--amp", "torchrun"):
        assert option in done.stdout, option


def test_two_processes_agree_with_each_other_and_with_one_process(real_root, tmp_path):
    steps = ["--steps", "20"]
    ddp_out = _run([*SMALL, *steps, "--out", str(tmp_path / "ddp.pt")], real_root, torchrun=True)
    assert "2 process(es) on cpu" in ddp_out
    assert "max weight difference across 2 processes: 0" in ddp_out, ddp_out
    single_out = _run([*SMALL, *steps, "--out", str(tmp_path / "single.pt")], real_root)
    assert "1 process(es)" in single_out

    ddp, single = read_checkpoint(tmp_path / "ddp.pt"), read_checkpoint(tmp_path / "single.pt")
    assert ddp["step"] == single["step"] == 20
    for name, value in single["model_state"].items():
        other = ddp["model_state"][name]
        if value.is_floating_point():  # equal up to summation order: gradients are averaged across processes
            scale = float(value.abs().max())
            assert float((other - value).abs().max()) <= 1e-3 * scale + 1e-5, name
        elif name.endswith("usage_counts"):  # float ties may move a vector or two to a neighbouring code
            assert other.sum() == value.sum() and float((other - value).abs().sum()) <= 1e-3 * float(value.sum()), name
        else:
            assert torch.equal(other, value), name
    # the logged losses are the global batch's (averaged over the processes), step for step
    torch.testing.assert_close(torch.tensor(ddp["history"]["total"]), torch.tensor(single["history"]["total"]), atol=1e-4, rtol=1e-3)
    # the test metrics are reduced over the processes: each evaluated half of the test images
    ddp_evals, single_evals = EVAL.findall(ddp_out), EVAL.findall(single_out)
    assert [s for s, _, _ in ddp_evals] == [s for s, _, _ in single_evals] == ["10", "20"]
    for (_, mse_d, _), (_, mse_s, _) in zip(ddp_evals, single_evals):
        assert abs(float(mse_d) - float(mse_s)) < 1e-4

    # resume the distributed run to 30 steps; the checkpoint (written by rank 0 only) continues
    _run([*SMALL, "--steps", "30", "--out", str(tmp_path / "ddp.pt"), "--resume"], real_root, torchrun=True)
    resumed = load_checkpoint(tmp_path / "ddp.pt")
    assert resumed.checkpoint_step == 30 and len(resumed.checkpoint_history["total"]) == 30
    assert not list(tmp_path.glob(".*.tmp")), "a temporary checkpoint file was left behind"
