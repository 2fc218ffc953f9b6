"""Shared fixtures: where the real test data is, and small real samples of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vqvae_lib import data_root, load_dataset

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("VQVAE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]  # fmt: skip


def _real_data_root() -> Path:
    """``VQVAE_DATA_ROOT`` if set (CI points it at a folder prepared from ../shared/datasets), else
    ``../shared/datasets`` beside the repo, else the package's own data root (downloads there)."""
    if os.environ.get("VQVAE_DATA_ROOT"):
        return data_root()
    shared = REPO.parent / "shared" / "datasets"
    return shared if shared.is_dir() else data_root()


@pytest.fixture(scope="session")
def real_root() -> Path:
    return _real_data_root()


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The read-only CI datasets (for formats only they have: the JPEG zips and exact subset)."""
    for candidate in (REPO.parent / "shared" / "datasets", _real_data_root()):
        if (candidate / "cifar10-exact-subset").is_dir():
            return candidate
    missing_shared_data("the CI datasets (../shared/datasets) are not beside the repository")


def missing_shared_data(reason: str) -> None:
    """Fail in CI (the data must be there), skip on a user's machine (only CI has these files)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_small(real_root):
    """2,048 real MNIST training digits and 512 test digits, in memory."""
    train = load_dataset("mnist", "train", root=real_root).subset(2048, seed=0)
    test = load_dataset("mnist", "test", root=real_root).subset(512, seed=0)
    return train, test


@pytest.fixture(autouse=True, scope="session")
def image_cache(tmp_path_factory) -> Path:
    """The tests' decoded-image cache: a fresh folder, not the data root's (a test must not depend on,
    or leave behind, what another run cached). Notebook kernels started by the tests inherit it."""
    folder = tmp_path_factory.mktemp("image-cache")
    os.environ["VQVAE_CACHE_DIR"] = str(folder)
    return folder


def pytest_configure(config):
    # Always 2 threads, whatever the machine has: PyTorch picks some convolution kernels by thread
    # count (oneDNN for small 1x1 convolutions only with more than one thread), so a fixed count keeps
    # every machine on the same code path. Set before any fixture builds a model.
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def browser(request):
    """Headless Debian Chromium driven by Playwright (the browser tests: JupyterLab's widgets, the website),
    with the test module's ``CHROMIUM_EXTRA_FLAGS`` added to the common flags."""
    if not CHROMIUM.exists():
        missing_shared_data(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_shared_data("the playwright package is not installed (pipenv install --dev)")
    with sync_playwright() as p:
        extra = getattr(request.module, "CHROMIUM_EXTRA_FLAGS", [])
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS + extra)
        yield b
        b.close()
