"""Build the website: the README as the intro page, one page per committed notebook in order, then the
reference pages in ``docs/`` (the library, your own images, results, development).

    python tools/build_site.py                 # -> _site/html/index.html (git-ignored); open it in a browser
    python tools/build_site.py --out DIR       # build somewhere else

Nothing is executed and nothing is fetched: the notebooks are shown as committed (full-mode outputs),
Sphinx + myst-nb + sphinx-book-theme render them, and MathJax and the search index are copied into the
site. The sources are gathered into ``<out>/source`` first, because the pages live in four folders of
the repository (README, ``notebooks/``, ``docs/``, ``model_visualisation/``) and a notebook page may get a first
cell that the committed notebook does not have: its "Open in Colab" link.

The Colab link needs the repository's GitHub name ("owner/name"): ``--repository``, else ``[project.urls]
Repository`` in ``pyproject.toml``, else the ``origin`` remote when it is on GitHub (``tools/colab.py``).
A page gets it only if its notebook starts with the Colab set-up cell for that name (``python
tools/colab.py --write``): without the cell, Colab would open a notebook that cannot import the library.
The build says which pages went without.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from colab import colab_url, first_code_cell, github_repository, setup_cell  # tools/ is this script's folder
from run_notebooks import notebook_paths

REPO = Path(__file__).resolve().parent.parent

__all__ = ["stage_sources", "build_site"]


# the pages beside the notebooks, from docs/, in the order of the sidebar (after the notebooks)
DOC_PAGES = ["library", "your_own_images", "results", "development"]


def _site_links(markdown: str, keep: tuple[str, ...]) -> str:
    """Links to files that are not pages of the site (``benchmarks/README.md`` is one) become plain text
    naming the file, instead of links that would lead nowhere; links starting with ``keep`` stay."""

    def unlink(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "#", *keep)):
            return match.group(0)
        name = target.removeprefix("../")
        return f"{text} (`{name}` in the repository)" if text != target else f"`{name}` (in the repository)"

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", unlink, markdown)


def _index_page(readme: str, pages: list[str]) -> str:
    readme = _site_links(readme, ("notebooks/", "model_visualisation/", *(f"docs/{p}.md" for p in DOC_PAGES)))
    toctree = "\n".join(["", "```{toctree}", ":hidden:", ":maxdepth: 1", "", *pages, "```", ""])
    return readme + toctree


def stage_sources(out: Path, repository: str | None, notebooks: list[Path] | None = None) -> Path:
    """Gather what the site is built from into ``out/source`` (replaced if it exists) and return it.
    ``notebooks``: the series' notebooks in order (default: the committed ones)."""
    import nbformat

    source = out / "source"
    if source.exists():
        shutil.rmtree(source)
    (source / "notebooks").mkdir(parents=True)
    shutil.copytree(REPO / "model_visualisation", source / "model_visualisation")
    pages, without_cell = [], []
    for path in notebooks or notebook_paths():
        nb = nbformat.read(path, as_version=4)
        if repository and first_code_cell(nb) == setup_cell(repository):
            badge = f'<a class="vqvae-colab-badge" href="{colab_url(repository, path.name)}">Open in Colab</a>'
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(badge))
        elif repository:
            without_cell.append(path.name)
        nbformat.write(nb, source / "notebooks" / path.name)
        pages.append(f"notebooks/{path.stem}")
    if without_cell:
        print(f"no Open in Colab link on {len(without_cell)} pages, whose notebooks lack the Colab set-up cell for "
              f"{repository} (python tools/colab.py --write): {', '.join(without_cell)}")  # fmt: skip
    (source / "docs").mkdir()
    keep = ("../notebooks/", "../model_visualisation/", *(f"{p}.md" for p in DOC_PAGES))  # links from docs/ that stay
    for name in DOC_PAGES:
        page = (REPO / "docs" / f"{name}.md").read_text(encoding="utf-8")
        (source / "docs" / f"{name}.md").write_text(_site_links(page, keep), encoding="utf-8")
        pages.append(f"docs/{name}")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (source / "index.md").write_text(_index_page(readme, pages), encoding="utf-8")
    return source


def build_site(out: Path, repository: str | None = None, quiet: bool = False, notebooks: list[Path] | None = None) -> Path:
    """Stage the sources and run Sphinx on them (warnings are errors); returns ``out/html/index.html``."""
    from sphinx.cmd.build import build_main

    source = stage_sources(out, repository, notebooks)
    args = ["-b", "html", "-c", str(REPO / "docs"), "-W", "--keep-going", "-d", str(out / "doctrees"), str(source), str(out / "html")]
    if quiet:
        args.insert(0, "-q")
    if build_main(args) != 0:
        raise SystemExit("the site did not build: see Sphinx's messages above")
    return out / "html" / "index.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "_site", help="where to build (default: _site, git-ignored)")
    parser.add_argument("--repository", help="GitHub owner/name for the Colab links (default: pyproject.toml, then git)")
    args = parser.parse_args()
    repository = github_repository(args.repository)
    if repository is None:
        print("no GitHub repository known (pyproject.toml [project.urls] Repository, --repository or an origin remote): "
              "the pages are built without their Open in Colab link")  # fmt: skip
    index = build_site(args.out.resolve(), repository)
    print(f"built: {index}\nopen it in a browser (no server or network needed)")


if __name__ == "__main__":
    main()
