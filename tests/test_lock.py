"""Pipfile.lock installs on every platform a learner uses: Linux (x86_64, aarch64), macOS on Apple
silicon and Windows (amd64). Its markers are also evaluated for Intel Macs, where the lock is right but
PyTorch publishes no wheels (README, "Platforms").

Pipenv resolves on the machine that runs ``pipenv lock`` and, for indirect dependencies, drops the
markers that the requiring package put on them: torch's Linux wheel requires the CUDA libraries with
``platform_system == "Linux"``, and without that marker ``pipenv install`` tries to install them on a
Mac, where they do not exist. It also leaves out what only another platform needs (``colorama`` on
Windows, ``appnope`` on macOS). The Pipfile names those packages with their markers (see the README,
"Why these tools"); these tests keep the lock honest after every re-lock.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = json.loads((REPO / "Pipfile.lock").read_text())
PIPFILE = tomllib.loads((REPO / "Pipfile").read_text())

sys.path.insert(0, str(REPO / "tools"))
from lock import MARKER_ENVIRONMENTS as PLATFORMS  # noqa: E402  (the same platforms the re-lock tool checks)

NOT_LINUX = ("macos-arm64", "macos-x86_64", "windows-amd64")
# Published only as Linux wheels (torch's CUDA build and what it pulls in): never on macOS or Windows.
LINUX_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def _applies(entry: dict, platform: str, extra: str = "") -> bool:
    marker = entry.get("markers")
    return True if not marker else Marker(marker).evaluate({**PLATFORMS[platform], "extra": extra})


def _locked(sections: tuple[str, ...] = ("default", "develop")) -> dict[str, dict]:
    """The entries ``pipenv install`` uses: ``default``'s alone, or with ``--dev`` both, a ``develop``
    entry replacing the ``default`` one of the same name (so both sections' markers matter)."""
    return {canonicalize_name(k): v for section in sections for k, v in LOCK[section].items()}


def _pipfile_roots(section: str) -> dict[str, str | None]:
    """Top-level package names of a Pipfile section and their markers (None: everywhere)."""
    roots = {}
    for name, spec in PIPFILE[section].items():
        roots[canonicalize_name(name)] = spec.get("markers") if isinstance(spec, dict) else None
    return roots


def _requirements(name: str) -> list[Requirement] | None:
    """The installed distribution's requirements, or None where it is not installed here."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return [Requirement(r) for r in dist.requires or []]


def _walk(platform: str, sections: tuple[str, ...]) -> tuple[set[str], list[tuple[str, Requirement]]]:
    """Every package ``pipenv install`` must put on ``platform`` for these Pipfile sections, and the
    requirements that pull them in, found by walking the installed distributions' requirements (with
    extras) from the Pipfile's roots. Packages not installed here (another platform's) are leaves:
    none of them has requirements of its own today (colorama, pywinpty, win32-setctime, appnope)."""
    env = PLATFORMS[platform]
    followed: dict[str, set[str]] = {}  # package -> the extras already followed
    edges: list[tuple[str, Requirement]] = []
    todo: list[tuple[str, set[str]]] = []
    for section in sections:
        for name, marker in _pipfile_roots(section).items():
            if marker is None or Marker(marker).evaluate({**env, "extra": ""}):
                todo.append((name, set()))
    while todo:
        name, extras = todo.pop()
        first_visit = name not in followed
        new_extras = extras - followed.setdefault(name, set())
        if not first_visit and not new_extras:
            continue
        followed[name] |= new_extras
        follow = ([""] if first_visit else []) + sorted(new_extras)
        for req in _requirements(name) or []:
            if req.marker is None and not first_visit:
                continue  # followed on the first visit
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in follow):
                edges.append((name, req))
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return set(followed), edges


def test_every_entry_is_pinned_with_hashes():
    """``pipenv install`` refuses a hashless entry among hashed ones: what a bare ``pipenv lock`` writes
    for another platform's package (tools/lock.py fills these in)."""
    for section in ("default", "develop"):
        for name, entry in LOCK[section].items():
            if entry.get("editable"):
                continue
            assert entry.get("version", "").startswith("==") and entry.get("hashes"), f"{section}: {name} {entry}"


@pytest.mark.parametrize("section", ["default", "develop"])
def test_linux_only_packages_apply_only_on_linux(section):
    locked = {canonicalize_name(k): v for k, v in LOCK[section].items()}
    linux_only = sorted(n for n in locked if LINUX_ONLY.match(n))
    assert len(linux_only) >= 10, "the lock should hold torch's CUDA libraries for Linux"
    wrong = {n: locked[n].get("markers") for n in linux_only for p in NOT_LINUX if _applies(locked[n], p)}
    assert not wrong, f"{section}: Linux-only wheels would be installed on macOS or Windows: {wrong}"
    assert all(_applies(locked[n], "linux-x86_64") for n in linux_only)


def test_torch_and_the_notebook_packages_apply_everywhere():
    locked = _locked()
    everywhere = [canonicalize_name(n) for n, m in _pipfile_roots("packages").items() if m is None]
    everywhere += [canonicalize_name(n) for n, m in _pipfile_roots("dev-packages").items() if m is None]
    assert {"torch", "torchvision", "jupyterlab", "ipywidgets", "pytest"} <= set(everywhere)
    missing = [n for n in everywhere if n not in locked]
    assert not missing, f"in the Pipfile but not in the lock: {missing}"
    for platform in PLATFORMS:
        skipped = [n for n in everywhere if not _applies(locked[n], platform)]
        assert not skipped, f"{platform}: the lock would skip {skipped}"


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_lock_holds_exactly_what_each_platform_needs(platform):
    """For ``pipenv install`` and ``pipenv install --dev``: what the requirement graph needs on a
    platform is locked and applies there, and what applies there is needed there. Reads the installed
    packages' metadata, so it checks the lock this environment was installed from (CI installs with
    ``pipenv install --dev --deploy``)."""
    locked = _locked()
    for name, entry in locked.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        version = entry.get("version", "").lstrip("=")
        if version and installed.split("+")[0] != version:
            pytest.skip(f"this environment is not installed from Pipfile.lock ({name} {installed}, lock {version})")
    for install, sections, roots in (("pipenv install", ("default",), ("packages",)),
                                     ("pipenv install --dev", ("default", "develop"), ("packages", "dev-packages"))):
        entries = _locked(sections)
        needed, edges = _walk(platform, roots)
        not_locked = sorted(n for n in needed if n not in entries)
        assert not not_locked, f"{install} on {platform} would miss {not_locked}"
        skipped = sorted(n for n in needed if not _applies(entries[n], platform))
        assert not skipped, f"{install} on {platform} needs these, but their lock markers exclude it: {skipped}"
        stray = sorted(n for n, e in entries.items() if _applies(e, platform) and n not in needed)
        assert not stray, f"{install} would put these on {platform}, where nothing needs them: {stray}"
        # every requirement's version range holds for the locked versions (tools/lock.py picks the
        # newest release of another platform's package; this catches one that a requirer excludes)
        for name, req in edges:
            version = entries[canonicalize_name(req.name)].get("version", "").lstrip("=")
            if version:  # (the editable vqvae-lib has none)
                assert req.specifier.contains(version, prereleases=True), f"{name} needs {req}, the lock has {version}"
