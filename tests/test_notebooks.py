"""The notebook series: every notebook runs end to end in fast mode on real data, and the committed
ones are executed in full mode and clean."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from run_notebooks import execute_notebook, notebook_paths  # noqa: E402

NOTEBOOKS = notebook_paths()
TRAINING = {"03", "04", "05", "06"}  # notebooks that train VQ-VAEs and must print test metrics
EVAL_LINE = re.compile(r"step\s+(\d+) \|\s+[\d.]+ s training \| test mse ([\d.]+) nmse ([\d.]+)")
SUMMARY_LINE = re.compile(r"test NMSE ([\d.]+) \| perplexity")
# an absolute path of the machine that ran a notebook: a POSIX home, temp or mount folder, or a drive
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:home|Users|root|tmp|var|work|private|mnt|opt|srv)/|\b[A-Za-z]:\\\\|\b[A-Za-z]:\\(?=\w)")
PRIOR_LINE = re.compile(r"test NLL ([\d.]+) nats = [\d.]+ bits per code\s+\(uniform prior: log K = ([\d.]+) nats")


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _pngs(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_the_series_is_complete():
    names = [p.name for p in NOTEBOOKS]
    assert [n[:2] for n in names] == ["01", "02", "03", "04", "05", "06", "07", "08"], names


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, monkeypatch_module):
    out = tmp_path_factory.mktemp("notebooks")
    monkeypatch_module.setenv("VQVAE_CHECKPOINT_DIR", str(out / "checkpoints"))
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path: Path, run_dir: Path):
    nb = execute_notebook(path, fast=True, output=run_dir / path.name, timeout=900)
    text = _text(nb)
    assert "fast mode: True" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert _pngs(nb) >= 1, "no figure was drawn"
    if path.name[:2] in TRAINING:
        evals = [(int(s), float(n)) for s, _, n in EVAL_LINE.findall(text)]
        if evals:  # train()'s own report: "step N | ... | test mse ... nmse ..."
            assert max(s for s, _ in evals) >= 30
            nmses = [n for _, n in evals]
        else:  # notebook 03 compares five quiet runs and prints one "test NMSE" line for each
            nmses = [float(n) for n in SUMMARY_LINE.findall(text)]
            assert len(nmses) == 5, "notebook 03 should report its five codebook variants"
        assert nmses, "the notebook printed no test evaluation: did it train?"
        assert all(0 < n < 1.0 for n in nmses), "test NMSE not below 1: the model learned nothing"
    if path.name.startswith("08"):  # two priors trained: both beat the uniform prior on test codes
        priors = [(float(nll), float(log_k)) for nll, log_k in PRIOR_LINE.findall(text)]
        assert len(priors) == 2, "notebook 08 should report the MNIST and CIFAR10 priors' test NLL"
        assert all(nll < log_k for nll, log_k in priors), priors
    if path.name.startswith("07"):
        gifs = list((run_dir / "interpolations").glob("*.gif"))
        assert {g.stem for g in gifs} >= {"mnist_interpolation"}, gifs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_in_full_mode_and_clean(path: Path):
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") is None for c in code), "execution counts left in"
    assert all(o.get("execution_count") is None for c in code for o in c.get("outputs", [])), "execution counts left in"
    assert "widgets" not in raw.get("metadata", {}), "widget state left in"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    assert all(c.get("outputs") for c in code if "plt.show()" in c.source), "a figure cell has no output"
    images = {k for c in code for o in c.get("outputs", []) for k in o.get("data", {}) if k.startswith("image/")}
    assert images == {"image/png"}, images
    assert "fast mode: False" in _text(nb), "committed notebooks hold full-mode results"
    text = _text(nb)
    for marker in {str(Path(__file__).resolve().parent.parent), str(Path.home())} - {"/"}:
        assert marker not in text, f"an output names a folder of the machine that ran it: {marker}"
    named = sorted({text[max(0, m.start() - 40) : m.end() + 40] for m in MACHINE_PATH.finditer(text)})
    assert not named, f"outputs name folders of the machine that ran them: {named}"
