"""The widgets in a real browser: JupyterLab on 127.0.0.1, headless Debian Chromium driven by Playwright.

The tests start JupyterLab with a fresh token on a free port, open a copy of a notebook and run every
cell in fast mode. Notebook 08: move the interpolation slider with the keyboard, check that the
displayed frame changes and that the Play button advances it. Notebook 04: press the codebook lab's
Train button and check that the picture is redrawn as the run goes and the run finishes. No cell may
show an error. Screenshots go to
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

from conftest import REPO

ARTIFACTS = REPO / "test-artifacts" / "browser"
NOTEBOOK = "08_latent_interpolation.ipynb"
LAB_NOTEBOOK = "04_codebook_collapse.ipynb"
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*Error\b", re.M)

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebooks (autosave cannot touch ours)."""
    root = tmp_path_factory.mktemp("lab")
    for name in (NOTEBOOK, LAB_NOTEBOOK):
        shutil.copy(REPO / "notebooks" / name, root / name)
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


def _open_and_run_all(browser, url: str, token: str, notebook: str, shot: str):
    """Open ``notebook`` in JupyterLab, run every cell, check that none shows an error; returns the page
    and the console errors collected so far."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors: list[str] = []
    page.on("pageerror", lambda err: console_errors.append(str(err)))
    # a workspace of its own, reset: otherwise JupyterLab reopens what an earlier test had open, and the
    # current widget need not be this notebook
    page.goto(f"{url}/lab/workspaces/{Path(notebook).stem}/tree/{notebook}?token={token}&reset", timeout=120_000)
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
    try:
        page.wait_for_function(
            "() => { const w = window.jupyterapp.shell.currentWidget; const cells = w.content.widgets"
            ".filter(c => c.model.type === 'code'); return cells.length > 0 && "
            "cells.every(c => c.model.executionCount !== null) && w.sessionContext.session.kernel.status === 'idle'; }",
            timeout=int(os.environ.get("VQVAE_BROWSER_RUN_TIMEOUT_MS", 600_000)),
            polling=1000,
        )
    except Exception:  # say which cell stopped the run, and what it showed
        page.screenshot(path=str(ARTIFACTS / f"failed_{shot}"), full_page=True)
        cells = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.toJSON())")
        pending = [c for c in cells if c["cell_type"] == "code" and c.get("execution_count") is None]
        shown = "".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in pending[:1])
        pytest.fail(f"{notebook}: {len(pending)} code cells never ran; the first:\n{shown[:400]}\n"
                    f"last outputs: {[c.get('outputs') for c in cells if c.get('execution_count')][-1:]}"[:3000])
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)

    # every cell's outputs as JupyterLab holds them (off-screen cells are not in the DOM)
    cells = page.evaluate("window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.toJSON())")
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert not errors, f"a cell shows an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    texts = ["".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream"]
    assert not [t for t in texts if ERROR_TEXT.search(t)], texts
    assert any("fast mode: True" in t for t in texts)
    return page, console_errors


def test_interpolation_slider_and_play_button_work_in_jupyterlab(browser, jupyterlab):
    url, token, root = jupyterlab
    page, console_errors = _open_and_run_all(browser, url, token, NOTEBOOK, "01_executed.png")

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


def test_codebook_lab_trains_and_redraws_in_jupyterlab(browser, jupyterlab):
    from playwright.sync_api import expect

    url, token, root = jupyterlab
    page, console_errors = _open_and_run_all(browser, url, token, LAB_NOTEBOOK, "lab_01_executed.png")
    lab = page.locator(".vqvae-codebook-lab").last  # classes the widget sets on itself for this
    status = lab.locator(".vqvae-lab-status")
    picture = lab.locator("img").last
    button = lab.locator("button", has_text="Train")
    # generous waits for a slow 2-core machine: a 300-step run takes about 3 s here (1.5 ms per step and
    # 31 redraws of about 70 ms), and the widget's first rendering only needs the notebook to be on screen
    button.wait_for(state="attached", timeout=60_000)
    button.scroll_into_view_if_needed(timeout=60_000)
    before = picture.get_attribute("src") or ""
    assert before, "the lab's picture is not displayed"
    expect(status).to_contain_text("press Train", timeout=30_000)
    button.click()
    # the status names the step as the run goes, and ends at "step 300 of 300" (not "step 30 of 300")
    expect(status).to_have_text(re.compile(r"step [1-9]\d* of \d+"), timeout=60_000)
    picture.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "lab_02_training.png"))
    expect(status).to_have_text(re.compile(r"step (\d+) of \1\b"), timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "lab_03_trained.png"))
    assert picture.get_attribute("src") != before, "the lab's picture did not change when it trained"
    assert "perplexity" in status.inner_text() and "error" not in status.inner_text().lower()
    assert not [e for e in console_errors if "widget" in e.lower()], console_errors
    page.close()
