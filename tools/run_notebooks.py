"""Execute the notebook series (the main job), in full or fast mode, and keep them clean.

    python tools/run_notebooks.py                 # full mode, outputs written back into notebooks/
    python tools/run_notebooks.py --fast 04 07    # fast mode, only 04_* and 07_*
    python tools/run_notebooks.py --fast --output-dir /tmp/run   # leave notebooks/ untouched

Executed notebooks are cleaned the way they are committed: no execution counts and no widget state
(outputs kept), so a diff shows only what changed in what a reader sees.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vqvae_lib.paths import project_dir
from vqvae_lib.runtime import FAST_ENV

__all__ = ["notebook_paths", "clean_notebook", "execute_notebook"]


def notebook_paths(selection: list[str] | None = None) -> list[Path]:
    """The series in order (``notebooks/NN_*.ipynb``), optionally only those whose name starts with one of ``selection``."""
    paths = sorted((project_dir() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if selection:
        paths = [p for p in paths if any(p.name.startswith(s) for s in selection)]
    return paths


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _progress_text(model_id: str, state: dict) -> str | None:
    """The final text of a tqdm.auto bar drawn as a widget, None for a transient bar (``leave=False``)
    that was hidden when done, "" for any other widget. Without this, GitHub and any kernel-free viewer show the text the bar
    had when it was first drawn: "0%"."""
    import html

    def model(ref: str) -> dict:
        return state.get(ref.removeprefix("IPY_MODEL_"), {}).get("state", {})

    children = [model(ref) for ref in model(model_id).get("children", [])]
    if len(children) != 3 or "max" not in children[1]:
        return ""  # not a progress bar (notebook 8's explorer): its output stays as it is
    left, bar, right = children
    if bar.get("bar_style") not in ("success", "danger"):  # tqdm hides a leave=False bar when it closes
        return None
    width = 10
    filled = int(width * bar.get("value", 0) / bar["max"]) if bar["max"] else width
    text = f"{left.get('value', '')}|{'█' * filled}{' ' * (width - filled)}|{right.get('value', '')}"
    return html.unescape(text).replace("\u2007", " ")


def _finish_progress_bars(nb) -> None:
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                kept.append(output)
                continue
            text = _progress_text(view["model_id"], state)
            if text is None:
                continue  # a finished transient bar: a live notebook shows nothing there either
            if text:
                output["data"] = {"text/plain": text}
            elif "text/html" in output["data"]:
                # a widget with a kernel-free copy (vqvae_lib.frame_player): with its state gone the view can
                # never be drawn again, so a static page or a reopened notebook shows the copy instead
                del output["data"][WIDGET_VIEW]
            kept.append(output)
        cell.outputs = kept


def clean_notebook(nb):
    """Drop execution counts and stored widget state, keep outputs (nbstripout --keep-output style).
    Progress bars keep their final text ("100%| ... 2800/2800 [01:10<00:00, ...]"); a widget that carries
    an HTML copy of itself keeps only the copy."""
    _finish_progress_bars(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.execution_count = None
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            if "execution_count" in output:
                output["execution_count"] = None
    return nb


PRETRAINED_SWITCH = "USE_PRETRAINED = False"


FOLDER_SWITCH = "IMAGE_FOLDER = None"


def use_pretrained(nb) -> None:
    """Flip the notebook's ``USE_PRETRAINED = False`` to True, as a reader who does not want to train would."""
    cells = [c for c in nb.cells if c.cell_type == "code" and PRETRAINED_SWITCH in c.source]
    if len(cells) != 1:
        raise ValueError(f"expected one cell with {PRETRAINED_SWITCH!r}, found {len(cells)}")
    cells[0].source = cells[0].source.replace(PRETRAINED_SWITCH, "USE_PRETRAINED = True", 1)


def execute_notebook(path: Path, fast: bool, output: Path | None = None, timeout: int = 3600, pretrained: bool = False,
                     image_folder: Path | None = None):  # fmt: skip
    """Run a notebook top to bottom in its own folder; raises on the first failing cell. ``pretrained``
    runs it with ``USE_PRETRAINED = True``; ``image_folder`` with ``IMAGE_FOLDER`` set to that folder, as
    a reader trying their own photos would (notebook 7)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if pretrained:
        use_pretrained(nb)
    if image_folder is not None:
        cells = [c for c in nb.cells if c.cell_type == "code" and FOLDER_SWITCH in c.source]
        if len(cells) != 1:
            raise ValueError(f"expected one cell with {FOLDER_SWITCH!r}, found {len(cells)}")
        cells[0].source = cells[0].source.replace(FOLDER_SWITCH, f"IMAGE_FOLDER = {str(image_folder)!r}", 1)
    previous = os.environ.get(FAST_ENV)
    os.environ[FAST_ENV] = "1" if fast else "0"  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(FAST_ENV, None)
        else:
            os.environ[FAST_ENV] = previous
    clean_notebook(nb)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output)
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("select", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--fast", action="store_true", help="fast mode: a few hundred steps each")
    parser.add_argument("--output-dir", type=Path, default=None, help="write executed notebooks here instead of in place")
    args = parser.parse_args()
    for path in notebook_paths(args.select):
        out = (args.output_dir / path.name) if args.output_dir else path
        t0 = time.perf_counter()
        print(f"running {path.name} ({'fast' if args.fast else 'full'} mode) ...", flush=True)
        execute_notebook(path, args.fast, out)
        print(f"  done in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
