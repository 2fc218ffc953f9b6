"""How live the codebook lab of notebook 4 is: time per training step, per redraw, and per update (the
steps between two redraws plus the redraw), which is what a reader pressing Train waits for each frame.

    python benchmarks/codebook_lab.py [--every 10] [--dpi 72]

Prints the machine (CPU, threads, float32 matrix-multiply GFLOP/s of 2048 x 2048) beside the times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqvae_lib.codebook_lab import CodebookLab, LabSettings, run_lab
from vqvae_lib.runtime import cpu_name, matmul_gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10, help="steps between redraws (the lab's default)")
    parser.add_argument("--dpi", type=int, default=72)
    args = parser.parse_args()
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"float32 matmul {matmul_gflops():.0f} GFLOP/s\n")
    print("| settings | ms per step | ms per redraw | ms per update in Train (median, max) |")
    print("| --- | --- | --- | --- |")
    for settings in (LabSettings(), LabSettings(ema_decay=0.9, init="kmeans", restart_after=20, num_codes=64)):
        run_lab(settings)  # warm-up
        start = time.perf_counter()
        snapshots = run_lab(settings, every=settings.steps)
        step_ms = 1000 * (time.perf_counter() - start) / settings.steps
        lab = CodebookLab(settings, every=args.every, dpi=args.dpi)
        redraws = []
        for snap in snapshots * 5:
            t = time.perf_counter()
            lab.render(snap)
            redraws.append(1000 * (time.perf_counter() - t))
        lab.train()  # what pressing Train does: the run, the redraws, the status line
        updates = lab.update_ms[1:]  # the first builds the model and the figure, before any step
        name = f"K={settings.num_codes}, decay {settings.ema_decay}, {settings.init}, restarts {settings.restart_after}"
        print(f"| {name} | {step_ms:.2f} | {statistics.median(redraws):.0f} | {statistics.median(updates):.0f}, {max(updates):.0f} |")


if __name__ == "__main__":
    main()
