"""Time and peak memory of the vector quantizers against a floor and two peers.

    python benchmarks/quantizer.py                  # D=64, K=512, N = 4,096 and 65,536 vectors
    python benchmarks/quantizer.py --n 4096 --threads 2 --device cpu

For each N, in one run:

* ``matmul floor``: the bare ``z @ codebook.T`` product (backward: its two gradient products). The
  nearest-code search is this product plus an argmin, so it bounds any quantizer from below.
* ``naive broadcast``: ``((z[:, None] - e[None]) ** 2).sum(-1).argmin(1)``, the N x K x D tensor many
  tutorials write, with the same losses and straight-through estimator. Skipped where it would
  not fit in memory (its need is printed instead).
* ``ours`` and ``ours EMA``: :class:`vqvae_lib.VectorQuantizer` and :class:`VectorQuantizerEMA` in training
  mode (usage counting and, for EMA, the codebook update are part of their forward).
* ``vqp`` and ``vqp EMA``: ``vector_quantize_pytorch.VectorQuantize`` at equal settings (``dim=64``,
  ``codebook_size=512``, commitment 0.25, EMA decay 0.99 or a learnable codebook), on the same
  ``(B, D, H, W)`` feature maps (``accept_image_fmap=True``).

Times are medians from ``torch.utils.benchmark`` (which synchronises CUDA). Peak memory is the
growth of the process's peak resident set while running the case once, each case in a fresh
process (on CUDA: ``torch.cuda.max_memory_allocated``). Ratios are to the floor and to each peer.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch
import torch.nn.functional as F

D, K, BETA, DECAY = 64, 512, 0.25, 0.99
CASES = ("matmul floor", "naive broadcast", "ours", "ours EMA", "vqp", "vqp EMA")


def feature_map(n: int, device: str, requires_grad: bool) -> torch.Tensor:
    side = 8 if n <= 4096 else 16
    batch = n // (side * side)
    torch.manual_seed(0)
    return torch.randn(batch, D, side, side, device=device, requires_grad=requires_grad)


def make_case(name: str, n: int, device: str, backward: bool):
    """A zero-argument function running one forward (and backward) pass of ``name``."""
    z = feature_map(n, device, backward)
    if name == "matmul floor":
        codebook = torch.randn(K, D, device=device, requires_grad=backward)
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, D).requires_grad_(backward)

        def run():
            out = flat @ codebook.T
            if backward:
                out.backward(torch.ones_like(out))

        return run
    if name == "naive broadcast":
        codebook = torch.randn(K, D, device=device, requires_grad=backward)

        def run():
            flat = z.permute(0, 2, 3, 1).reshape(-1, D)
            idx = ((flat[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1)
            e = codebook[idx]
            z_q = flat + (e - flat).detach()
            loss = z_q.square().mean() + F.mse_loss(e, flat.detach()) + BETA * F.mse_loss(flat, e.detach())
            if backward:
                loss.backward()

        return run
    if name.startswith("ours"):
        from vqvae_lib import VectorQuantizer, VectorQuantizerEMA

        q = (VectorQuantizerEMA(K, D, BETA, DECAY) if name.endswith("EMA") else VectorQuantizer(K, D, BETA)).to(device)
        q.train()

        def run():
            out = q(z)
            loss = out.z_q.square().mean() + out.codebook_loss + BETA * out.commitment_loss
            if backward:
                loss.backward()

        return run
    if name.startswith("vqp"):
        from vector_quantize_pytorch import VectorQuantize

        ema = name.endswith("EMA")
        vq = VectorQuantize(
            dim=D, codebook_size=K, decay=DECAY, commitment_weight=BETA, accept_image_fmap=True,
            ema_update=ema, learnable_codebook=not ema,
        ).to(device)  # fmt: skip
        vq.train()

        def run():
            quantized, _, commit = vq(z)
            loss = quantized.square().mean() + commit.sum()
            if backward:
                loss.backward()

        return run
    raise ValueError(name)


def naive_bytes(n: int) -> int:
    return n * K * D * 4 * 2  # the difference tensor and its square


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure_memory(name: str, n: int, device: str, backward: bool) -> float:
    """Peak extra MiB while running the case once (a fresh process on CPU)."""
    run = make_case(name, n, device, backward)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set to the current one
    base = _rss_kib("VmRSS:")
    run()
    return (_rss_kib("VmHWM:") - base) / 1024


def memory_in_subprocess(name: str, n: int, device: str, backward: bool, threads: int) -> float | None:
    if device.startswith("cuda"):
        return measure_memory(name, n, device, backward)
    cmd = [sys.executable, __file__, "--memory-of", name, "--n", str(n), "--device", device, "--threads", str(threads)]
    if backward:
        cmd.append("--backward")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["mib"]


def time_case(name: str, n: int, device: str, backward: bool, threads: int, min_time: float) -> float:
    from torch.utils.benchmark import Timer

    run = make_case(name, n, device, backward)
    for _ in range(2):  # warm-up (first-call allocations, lazy init)
        run()
    timer = Timer("run()", globals={"run": run}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[4096, 65536], help="vectors per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per case")
    parser.add_argument("--memory-limit-gib", type=float, default=8.0, help="skip the naive case above this")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.memory_of:  # child process: one memory measurement
        print(json.dumps({"mib": measure_memory(args.memory_of, args.n[0], args.device, args.backward)}))
        return

    try:
        import vector_quantize_pytorch  # noqa: F401

        cases = CASES
    except ImportError:
        print("vector-quantize-pytorch is not installed (it is a dev dependency: pipenv install --dev); peers skipped")
        cases = CASES[:4]
    print(f"{platform.processor() or platform.machine()}, device {args.device}, {args.threads} threads, torch {torch.__version__}")
    print(f"D = {D}, K = {K}; times are medians in ms, memory the peak extra MiB of one pass\n")
    results: dict[tuple, dict] = {}
    for n in args.n:
        for backward in (False, True):
            mode = "forward+backward" if backward else "forward"
            print(f"### N = {n:,} vectors, {mode}\n")
            print("| implementation | ms | x floor | peak MiB |")
            print("| --- | --- | --- | --- |")
            for name in cases:
                if name == "naive broadcast" and naive_bytes(n) > args.memory_limit_gib * 2**30:
                    print(f"| {name} | skipped: needs {naive_bytes(n) / 2**30:.1f} GiB for N x K x D | | |")
                    continue
                ms = time_case(name, n, args.device, backward, args.threads, args.min_time)
                mib = memory_in_subprocess(name, n, args.device, backward, args.threads)
                results[(n, backward, name)] = {"ms": ms, "mib": mib}
                floor = results[(n, backward, "matmul floor")]["ms"]
                mem = "?" if mib is None else f"{mib:.1f}"
                print(f"| {name} | {ms:.2f} | {ms / floor:.2f} | {mem} |")
            print()
    print("### Ratios (time of the left one / time of the right one; below 1 means the left is faster)\n")
    print("| N | pass | ours / floor | ours EMA / floor | ours / vqp | ours EMA / vqp EMA | ours / naive |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.n:
        for backward in (False, True):
            def ratio(a: str, b: str) -> str:
                ra, rb = results.get((n, backward, a)), results.get((n, backward, b))
                return f"{ra['ms'] / rb['ms']:.2f}" if ra and rb else "-"

            mode = "fwd+bwd" if backward else "fwd"
            print(f"| {n:,} | {mode} | {ratio('ours', 'matmul floor')} | {ratio('ours EMA', 'matmul floor')} | "
                  f"{ratio('ours', 'vqp')} | {ratio('ours EMA', 'vqp EMA')} | {ratio('ours', 'naive broadcast')} |")  # fmt: skip


if __name__ == "__main__":
    main()
