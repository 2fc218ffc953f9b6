"""The widgets in a real browser: JupyterLab on 127.0.0.1, headless Debian Chromium driven by Playwright.

The test starts JupyterLab with a fresh token on a free port, opens a copy of notebook 07, runs every
cell in fast mode, moves the interpolation slider with the keyboard and checks that the displayed
frame changes, that the Play button advances it, and that no cell shows an error. Screenshots go to
``test-artifacts/browser/``. Needs Debian's ``chromium`` (``/usr/bin/chromium``, installed by
``.ci/run``) and the ``playwright`` package; Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, missing_shared_data

CHROMIUM = Path(os.environ.get("VQVAE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts" / "browser"
NOTEBOOK = "07_latent_interpolation.ipynb"
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*Error\b", re.M)

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        missing_shared_data(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_shared_data("the playwright package is not installed (pipenv install --dev)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebooks (autosave cannot touch ours)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "VQVAE_FAST": "1",
        "VQVAE_CHECKPOINT_DIR": str(root / "checkpoints"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"JupyterLab exited:\n{(root / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _frame_src(page) -> str:
    return page.locator(".jp-OutputArea-output img.widget-image, .jp-OutputArea-output .widget-image img, "
                        ".jp-OutputArea-output img[src^='blob:']").last.get_attribute("src") or ""  # fmt: skip


def test_interpolation_slider_and_play_button_work_in_jupyterlab(browser, jupyterlab):
    url, token, root = jupyterlab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors: list[str] = []
    page.on("pageerror", lambda err: console_errors.append(str(err)))
    page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}", timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=60_000)
    # wait for the kernel, then run everything
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget; "
        "return w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel "
        "&& w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=120_000,
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # done when every code cell has an execution count and the kernel is idle again
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget; const cells = w.content.widgets"
        ".filter(c => c.model.type === 'code'); return cells.length > 0 && "
        "cells.every(c => c.model.executionCount !== null) && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=600_000,
        polling=1000,
    )
    page.screenshot(path=str(ARTIFACTS / "01_executed.png"), full_page=True)

    # every cell's outputs as JupyterLab holds them (off-screen cells are not in the DOM)
    cells = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.toJSON())")
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, f"a cell shows an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    texts = ["".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream"]
    assert not [t for t in texts if ERROR_TEXT.search(t)], texts
    assert any("fast mode: True" in t for t in texts)

    slider = page.locator(".widget-slider").last
    slider.scroll_into_view_if_needed()
    slider.wait_for(state="visible", timeout=60_000)
    readout = page.locator(".widget-slider .widget-readout").last
    before_src, before_value = _frame_src(page), readout.inner_text()
    assert before_src, "the interpolation image is not displayed"
    page.screenshot(path=str(ARTIFACTS / "02_slider_at_start.png"))

    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(6):
        handle.press("ArrowRight")
    page.wait_for_function(
        "(old) => { const imgs = document.querySelectorAll('.jp-OutputArea-output img'); "
        "return imgs.length && imgs[imgs.length - 1].getAttribute('src') !== old; }",
        arg=before_src,
        timeout=30_000,
    )
    after_src, after_value = _frame_src(page), readout.inner_text()
    page.screenshot(path=str(ARTIFACTS / "03_slider_moved.png"))
    assert after_value != before_value, (before_value, after_value)
    assert after_src != before_src, "moving the slider did not change the displayed frame"

    # the Play button drives the same slider through a jslink
    page.locator(".jupyter-widgets.widget-play button").first.click()
    page.wait_for_function(
        "(old) => { const r = document.querySelectorAll('.widget-slider .widget-readout'); "
        "return r.length && r[r.length - 1].innerText !== old; }",
        arg=after_value,
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "04_playing.png"))
    assert not [e for e in console_errors if "widget" in e.lower()], console_errors
    page.close()
