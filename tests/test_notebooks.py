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
TRAINING = {"04", "05", "06", "07", "10"}  # notebooks that train VQ-VAEs and must print test metrics
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
    assert [n[:2] for n in names] == ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10"], names


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
        else:  # notebook 04 compares five quiet runs and prints one "test NMSE" line for each
            nmses = [float(n) for n in SUMMARY_LINE.findall(text)]
            assert len(nmses) == 5, "notebook 04 should report its five codebook variants"
        assert nmses, "the notebook printed no test evaluation: did it train?"
        assert all(0 < n < 1.0 for n in nmses), "test NMSE not below 1: the model learned nothing"
    if path.name.startswith("09"):  # three priors trained: MNIST's and CIFAR10's beat the uniform prior on test codes
        priors = [(float(nll), float(log_k)) for nll, log_k in PRIOR_LINE.findall(text)]
        assert len(priors) == 3, "notebook 09 should report the MNIST, CIFAR10 and photo priors' test NLL"
        assert all(nll < log_k for nll, log_k in priors[:2]), priors
    if path.name.startswith("10"):  # ten quantizer runs (five on MNIST, five on CIFAR10), each with a prior
        assert len(re.findall(r"^\S.*: trained \d+ steps in", text, re.M)) == 10
        assert len(re.findall(r"prior test NLL [\d.]+ bits per code", text)) == 10
    if path.name.startswith("08"):
        gifs = list((run_dir / "interpolations").glob("*.gif"))
        assert {g.stem for g in gifs} >= {"mnist_interpolation"}, gifs


PRETRAINED = [p for p in NOTEBOOKS if p.name[:2] in {"05", "06", "07", "09", "10"}]


@pytest.mark.notebooks
@pytest.mark.parametrize("path", PRETRAINED, ids=[p.stem for p in PRETRAINED])
def test_notebook_runs_with_the_committed_models(path: Path, run_dir: Path):
    # a reader who does not want to train: USE_PRETRAINED = True loads data/pretrained/ onto the notebook's
    # device and everything after it runs; the long runs are skipped (no "trained N steps" or prior line;
    # notebook 5's short by-hand runs still train, they are the lesson)
    nb = execute_notebook(path, fast=True, output=run_dir / "pretrained" / path.name, timeout=900, pretrained=True)
    text = _text(nb)
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    trained = [line for line in text.splitlines() if re.match(r"trained \d+ steps|prior: [\d,]+ parameters", line)]
    assert not trained, trained
    if path.name.startswith("09"):
        priors = [(float(nll), float(log_k)) for nll, log_k in PRIOR_LINE.findall(text)]
        assert len(priors) == 2 and all(nll < log_k for nll, log_k in priors), priors


@pytest.mark.notebooks
def test_notebooks_6_to_8_run_on_a_small_folder_of_ones_own(shared_root, tmp_path, monkeypatch):
    """A first try with 19 of one's own photos, as a new user makes it: notebook 7 adapts (batch, held-out
    part) and says what so few images mean; notebook 8 offers the model in its explorer, on the folder's
    photos; notebook 9 trains a prior on its codes and samples from it."""
    import shutil

    folder = tmp_path / "my photos"
    folder.mkdir()
    for photo in sorted((shared_root / "food-101-sample" / "food-101" / "images").rglob("*.jpg"))[::40][:19]:
        shutil.copy(photo, folder / f"{photo.parent.name}_{photo.name}")
    monkeypatch.setenv("VQVAE_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))  # this reader's runs only
    by_name = {p.name[:2]: p for p in NOTEBOOKS}
    texts = {}
    for number in ("07", "08", "09"):
        nb = execute_notebook(by_name[number], fast=True, output=tmp_path / by_name[number].name, timeout=900,
                              image_folder=folder if number == "07" else None)  # fmt: skip
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
        texts[number] = _text(nb)
    assert re.search(r"19 images: 1\d to train on, \d held out to test on; batches of 1\d\.", texts["07"])
    assert "So few images" in texts["07"]
    assert (tmp_path / "checkpoints" / "my_images.pt").exists()
    assert re.search(r"my_images: .*my_images\.pt \(step \d+\), on \d+ photos of your folder", texts["08"])
    assert (tmp_path / "interpolations" / "my_images_interpolation.gif").exists()
    assert "your photos: " in texts["09"] and "your photos prior:" in texts["09"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_in_full_mode_and_clean(path: Path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
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


def test_progress_bars_are_committed_in_their_final_state():
    # tqdm.auto draws a widget whose text/plain is its first state ("0%"); the runner must write the final
    # text of a finished bar and drop a transient (leave=False) one, which a live notebook hides
    from run_notebooks import clean_notebook

    def bar(prefix, value, style, left, right):
        ids = [f"{prefix}{n}" for n in ("box", "left", "bar", "right")]
        state = {
            ids[0]: {"state": {"children": [f"IPY_MODEL_{i}" for i in ids[1:]]}},
            ids[1]: {"state": {"value": left}},
            ids[2]: {"state": {"value": value, "max": 50.0, "bar_style": style}},
            ids[3]: {"state": {"value": right}},
        }
        output = nbformat.v4.new_output("display_data", data={
            "text/plain": "0%", "application/vnd.jupyter.widget-view+json": {"model_id": ids[0], "version_major": 2, "version_minor": 0}})
        return state, output

    done_state, done = bar("a", 50.0, "success", "training:\u2007100%", "\u200750/50\u2007[00:01&lt;00:00,\u200740.0it/s]")
    gone_state, gone = bar("b", 50.0, "", "decoding:\u2007\u2007\u20070%", "\u20070/50")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("", outputs=[done, gone, nbformat.v4.new_output("stream", text="x\n")])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {**done_state, **gone_state}}}
    outputs = clean_notebook(nb).cells[0].outputs
    assert [o.get("data", {}).get("text/plain", o.get("text")) for o in outputs] == [
        "training: 100%|██████████| 50/50 [00:01<00:00, 40.0it/s]", "x\n"]
    assert "widgets" not in nb.metadata


def test_a_widget_with_an_html_copy_is_committed_as_the_copy():
    # the explorer and the codebook lab carry a FramePlayer/picture as text/html: once the widget state is
    # dropped the view is dead, so only the copy may stay (a static page would otherwise pick the dead view)
    from run_notebooks import WIDGET_VIEW, clean_notebook

    view = {"model_id": "c0", "version_major": 2, "version_minor": 0}
    state = {"c0": {"state": {"children": ["IPY_MODEL_c1"]}}, "c1": {"state": {}}}
    with_copy = nbformat.v4.new_output("display_data", data={WIDGET_VIEW: view, "text/html": "<div>copy</div>", "text/plain": "VBox()"})
    without = nbformat.v4.new_output("display_data", data={WIDGET_VIEW: dict(view), "text/plain": "VBox()"})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("", outputs=[with_copy, without])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    first, second = clean_notebook(nb).cells[0].outputs
    assert set(first["data"]) == {"text/html", "text/plain"}
    assert set(second["data"]) == {WIDGET_VIEW, "text/plain"}


def test_committed_players_carry_the_current_script():
    # the kernel-free players are committed as HTML with their script inlined at execution time: a change
    # to vqvae_lib/frame_player.py must be followed by re-executing notebooks 4 and 7, or the website
    # would keep running the old script
    from vqvae_lib.frame_player import _SCRIPT

    for prefix, players in (("04_", 2), ("08_", 1)):
        (path,) = [p for p in NOTEBOOKS if p.name.startswith(prefix)]
        html = ["".join(o["data"]["text/html"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"] for o in c.get("outputs", [])
                if "vqvae-player-data" in "".join(o.get("data", {}).get("text/html", ""))]  # fmt: skip
        assert len(html) == players, f"{path.name}: {len(html)} players"
        assert all(_SCRIPT in h for h in html), f"{path.name}: re-execute it (python tools/run_notebooks.py {prefix[:2]})"
