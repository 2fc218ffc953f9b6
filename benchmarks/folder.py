"""How fast a folder of photos becomes training data, and what the fast path costs in quality.

    python benchmarks/folder.py [--photos 40] [--size 64]

Two sets of real JPEGs: phone-sized 12-megapixel photos (4032 x 3024, made from Food-101 sample photos
scaled up, with sensor-like noise so that they compress like camera JPEGs) and the Food-101 sample as it
is (about 512 x 512). For each, in one run, side by side:

- **plain**: what the loader did before: a full decode, then a Lanczos resize of the whole image, one
  file after another;
- **draft, 1 thread**: the library's decode (:func:`vqvae_lib.data.decode_one`: libjpeg's 1/2-1/8 DCT
  scaling, then Lanczos from at least four times the output size), one thread;
- **library**: the same with the thread pool :func:`vqvae_lib.data.decode_many` uses;
- **cache**: a first ``load_dataset("folder", ...)`` (scan + decode + write the cache) and a second one
  (scan + read the cache).

Quality: the mean absolute difference, in grey levels of 255, between the library's images and the plain
path's, averaged over the images, and the largest per-image mean.
Prints the machine (CPU, threads, float32 matrix-multiply GFLOP/s of 2048 x 2048) beside the times.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vqvae_lib import load_dataset
from vqvae_lib.data import _resize_center_crop, _to_mode, decode_many, decode_one
from vqvae_lib.paths import data_root
from vqvae_lib.runtime import cpu_name, matmul_gflops


def plain_decode(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Full decode and a Lanczos resize of the whole image: the reference for speed and quality."""
    with Image.open(path) as img:
        img = _to_mode(ImageOps.exif_transpose(img), 3)
        img = _resize_center_crop(img, size)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def make_phone_photos(sources: list[Path], folder: Path, n: int) -> list[Path]:
    """``n`` 4032 x 3024 JPEGs (quality 92, like a phone's) from Food-101 photos scaled up, plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = folder / f"IMG_{i:04d}.jpg"
        if not path.exists():
            with Image.open(sources[i % len(sources)]) as src:
                big = np.asarray(src.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC), dtype=np.float32)
            big += rng.normal(0, 4, big.shape).astype(np.float32)
            Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(path, quality=92)
        out.append(path)
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(name: str, files: list[Path], size: tuple[int, int]) -> None:
    n = len(files)
    for p in files:  # every file in the page cache first, so that no path pays for the disk alone
        p.read_bytes()
    t_plain, plain = timed(lambda: [plain_decode(p, size) for p in files])
    t_one, _ = timed(lambda: [decode_one(p, 3, size).pixels for p in files])
    t_lib, (decoded, failures) = timed(lambda: decode_many([lambda p=p: p for p in files], 3, size, name))
    assert not failures, failures
    diffs = [(decoded[i].pixels.float() - plain[i].float()).abs().mean().item() for i in range(n)]
    ms = lambda t: f"{1000 * t / n:.1f}"  # noqa: E731
    print(f"| {name} ({n} files) | {ms(t_plain)} | {ms(t_one)} ({t_plain / t_one:.1f}x) | {ms(t_lib)} "
          f"({t_plain / t_lib:.1f}x) | {np.mean(diffs):.3f} (max {max(diffs):.3f}) |")


def measure_cache(folder: Path, size: int) -> None:
    before = os.environ.get("VQVAE_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["VQVAE_CACHE_DIR"] = cache
        try:
            first, ds = timed(lambda: load_dataset("folder", "all", root=folder, image_size=size))
            again, _ = timed(lambda: load_dataset("folder", "all", root=folder, image_size=size))
        finally:
            os.environ.pop("VQVAE_CACHE_DIR") if before is None else os.environ.update(VQVAE_CACHE_DIR=before)
    print(f"| {folder.name} ({len(ds)} images) | {first:.2f} s | {again:.3f} s ({first / again:.0f}x faster) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=40, help="how many 12-megapixel photos to make")
    parser.add_argument("--size", type=int, default=64, help="output size (square)")
    args = parser.parse_args()
    food = data_root() / "food-101"
    if not food.is_dir():
        food = data_root() / "food-101-sample" / "food-101"
    sample = sorted((food / "images").rglob("*.jpg"))
    if not sample:
        raise SystemExit(f"no Food-101 photos under {food}: point VQVAE_DATA_ROOT at the data root")
    size = (args.size, args.size)
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"float32 matmul {matmul_gflops():.0f} GFLOP/s (2 threads: {torch.get_num_threads()})\n")
    with tempfile.TemporaryDirectory() as tmp:
        phone = make_phone_photos(sample, Path(tmp) / "phone_photos", args.photos)
        print(f"ms per photo at {args.size}x{args.size}:\n")
        print("| photos | plain (full decode + Lanczos) | draft, 1 thread | library (draft + threads) | "
              "mean abs. difference to plain (levels of 255) |")
        print("| --- | --- | --- | --- | --- |")
        measure("12-MP JPEGs", phone, size)
        measure("Food-101 sample", sample, size)
        print("\nfirst load against a re-load (cache):\n")
        print("| folder | first load | re-load |")
        print("| --- | --- | --- |")
        measure_cache(Path(tmp) / "phone_photos", args.size)
        measure_cache(food / "images", args.size)


if __name__ == "__main__":
    main()
