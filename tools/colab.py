"""Run the notebooks on Google Colab: the "Open in Colab" address of each, and the first cell that sets Colab up.

    python tools/colab.py            # say what the notebooks carry now
    python tools/colab.py --write    # put the set-up cell first in every notebook (or bring it up to date)

Colab opens a notebook straight from GitHub, without the rest of the repository, so each notebook's
first code cell fetches it there: a shallow clone (the library and the committed pretrained models),
an editable install of the library, and the clone's ``notebooks/`` as the working folder. The cell is
guarded: anywhere but Colab it does nothing and prints nothing, so it needs no re-execution of the
series. Both the cell and the Colab links need the repository's GitHub name, recorded once as
``[project.urls] Repository`` in ``pyproject.toml``; without it ``--write`` refuses.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tomllib
from pathlib import Path

from run_notebooks import notebook_paths  # tools/ is this script's folder

__all__ = ["github_repository", "colab_url", "setup_cell", "first_code_cell", "write_setup_cells"]

REPO = Path(__file__).resolve().parent.parent
GITHUB = re.compile(r"github\.com[:/]+([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
MARKER = "# Colab only:"  # how the set-up cell is recognised when it is rewritten


def github_repository(explicit: str | None = None, use_git: bool = True) -> str | None:
    """``owner/name`` of the repository on GitHub: ``explicit``, else ``pyproject.toml``'s ``[project.urls]
    Repository``, else (``use_git``) the ``origin`` remote; None when none of them is on GitHub."""
    if explicit:
        match = re.fullmatch(r"[\w.-]+/[\w.-]+", explicit) or GITHUB.search(explicit)
        if not match:
            raise ValueError(f"a GitHub repository is owner/name or its URL, got {explicit!r}")
        return match.group(1) if match.re is GITHUB else explicit
    with open(REPO / "pyproject.toml", "rb") as file:
        urls = tomllib.load(file).get("project", {}).get("urls", {})
    candidates = [urls.get("Repository")]
    if use_git:
        try:
            remote = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True)
            candidates.append(remote.stdout.strip() if remote.returncode == 0 else None)
        except FileNotFoundError:  # no git: an unpacked archive
            pass
    for candidate in filter(None, candidates):
        match = GITHUB.search(candidate)
        if match:
            return match.group(1)
    return None


def colab_url(repository: str, notebook: str, branch: str = "main") -> str:
    """The address that opens ``notebooks/<notebook>`` of the GitHub repository in Google Colab."""
    return f"https://colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{notebook}"


def setup_cell(repository: str, branch: str = "main") -> str:
    """The source of the guarded first cell for a repository ``owner/name``."""
    return f'''{MARKER} fetch this project (the library and its pretrained models) and install it.
# Anywhere else this cell does nothing: set up as the README says.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    CLONE = "/content/vqvae"
    if not os.path.isdir(CLONE):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", "https://github.com/{repository}", CLONE], check=True)
    # Colab's own torch, torchvision and ipywidgets stay; the library and what it needs on top of them go in
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--editable", CLONE], check=True)
    sys.path.insert(0, CLONE)  # the editable install is only on the path of kernels started after it
    os.chdir(CLONE + "/notebooks")'''


def _first_code_index(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def first_code_cell(nb) -> str | None:
    """The source of a notebook's (an nbformat notebook's) first code cell; None if it has none."""
    first = _first_code_index(nb)
    return None if first is None else nb.cells[first].source


def write_setup_cells(repository: str, paths: list[Path] | None = None) -> list[Path]:
    """Put the set-up cell first in each notebook (replacing an older one); returns the notebooks changed."""
    import nbformat

    changed = []
    source = setup_cell(repository)
    for path in paths or notebook_paths():
        nb = nbformat.read(path, as_version=4)
        first = _first_code_index(nb)
        if first is not None and nb.cells[first].source.startswith(MARKER):
            if nb.cells[first].source == source:
                continue
            nb.cells[first].source = source
        else:
            cell = nbformat.v4.new_code_cell(source)
            nb.cells.insert(0 if first is None else first, cell)
        nbformat.write(nb, path)
        changed.append(path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="put the set-up cell first in every notebook")
    args = parser.parse_args()
    repository = github_repository(use_git=False)  # the cell is committed: only what the repository records
    if repository is None:
        raise SystemExit("pyproject.toml names no GitHub repository: add [project.urls] Repository = "
                         '"https://github.com/OWNER/NAME" first')  # fmt: skip
    if args.write:
        changed = write_setup_cells(repository)
        print(f"{len(changed)} notebooks changed" + "".join(f"\n  {p.name}" for p in changed))
    else:
        import nbformat

        current = [p.name for p in notebook_paths() if first_code_cell(nbformat.read(p, as_version=4)) == setup_cell(repository)]
        print(f"repository {repository}; the up-to-date set-up cell is first in {len(current)} notebooks: {', '.join(current)}")


if __name__ == "__main__":
    main()
