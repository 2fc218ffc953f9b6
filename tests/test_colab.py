"""The Colab set-up cell and links (tools/colab.py). Colab itself cannot be reached from here: these tests
run the cell with a stand-in ``google.colab`` module and record what it would do."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types

import nbformat
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from colab import colab_url, first_code_cell, github_repository, setup_cell, write_setup_cells  # noqa: E402
from run_notebooks import notebook_paths  # noqa: E402

REPOSITORY = "example-owner/vqvae-notebooks"  # a stand-in: nothing here contacts GitHub


def _run_cell(monkeypatch, on_colab: bool) -> list:
    """Execute the set-up cell; returns what it did: the commands it ran and the folder it moved into."""
    done: list = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: done.append(("run", cmd, kw.get("check"))))
    monkeypatch.setattr("os.chdir", lambda path: done.append(("chdir", path)))
    monkeypatch.setattr("os.path.isdir", lambda path: False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(setup_cell(REPOSITORY), "<setup cell>", "exec"), {})
    return done


def test_the_setup_cell_does_nothing_outside_colab(monkeypatch, capsys):
    assert _run_cell(monkeypatch, on_colab=False) == []
    assert capsys.readouterr() == ("", ""), "it prints nothing: the committed notebooks show no output for it"


def test_the_setup_cell_fetches_installs_and_moves_into_the_notebooks_on_colab(monkeypatch):
    done = _run_cell(monkeypatch, on_colab=True)
    clone, install, chdir = done
    assert clone == ("run", ["git", "clone", "--depth", "1", "--branch", "main", f"https://github.com/{REPOSITORY}", "/content/vqvae"], True)
    assert install == ("run", [sys.executable, "-m", "pip", "install", "--quiet", "--editable", "/content/vqvae"], True)
    assert chdir == ("chdir", "/content/vqvae/notebooks")


def test_setup_cells_are_written_once_first_and_kept_up_to_date(tmp_path):
    paths = []
    for path in notebook_paths()[:2]:
        shutil.copy(path, tmp_path / path.name)
        paths.append(tmp_path / path.name)
    before = [nbformat.read(p, as_version=4) for p in paths]
    assert write_setup_cells(REPOSITORY, paths) == paths
    assert write_setup_cells(REPOSITORY, paths) == [], "a second run changes nothing"
    for path, old in zip(paths, before):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert first_code_cell(nb) == setup_cell(REPOSITORY)
        assert len(nb.cells) == len(old.cells) + 1 and nb.cells[0].cell_type == old.cells[0].cell_type, "after the title"
    assert write_setup_cells("other/name", paths) == paths  # a new name replaces the cell, never adds one
    assert all(len(nbformat.read(p, as_version=4).cells) == len(o.cells) + 1 for p, o in zip(paths, before))
    assert "github.com/other/name" in first_code_cell(nbformat.read(paths[0], as_version=4))


@pytest.mark.parametrize("given, expected", [
    ("owner/name", "owner/name"),
    ("https://github.com/owner/name", "owner/name"),
    ("https://github.com/owner/name.git", "owner/name"),
    ("git@github.com:owner/my.repo.git", "owner/my.repo"),
])  # fmt: skip
def test_repository_names_are_read_from_what_people_paste(given, expected):
    assert github_repository(given) == expected
    assert colab_url(expected, "05_mnist.ipynb") == f"https://colab.research.google.com/github/{expected}/blob/main/notebooks/05_mnist.ipynb"


def test_a_repository_elsewhere_is_refused():
    with pytest.raises(ValueError, match="owner/name"):
        github_repository("https://gitlab.com/owner/name")


def test_a_page_links_to_colab_only_when_its_notebook_can_run_there(tmp_path):
    # a Colab link to a notebook without the set-up cell would open a notebook that cannot import the
    # library: the site draws the link only for notebooks that carry the cell for that repository
    from build_site import stage_sources

    with_cell = tmp_path / "with"
    with_cell.mkdir()
    (path,) = notebook_paths(["02"])
    copy = with_cell / path.name
    shutil.copy(path, copy)
    write_setup_cells(REPOSITORY, [copy])
    for notebooks, linked in (([path], False), ([copy], True)):
        staged = stage_sources(tmp_path / f"site-{linked}", REPOSITORY, notebooks) / "notebooks" / path.name
        first = nbformat.read(staged, as_version=4).cells[0]
        assert (colab_url(REPOSITORY, path.name) in first.source) is linked
