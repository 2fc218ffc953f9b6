"""Re-lock the project: ``pipenv lock``, then complete the entries of other platforms' packages.

    pipenv run python tools/lock.py          # instead of a bare `pipenv lock`
    pipenv run python tools/lock.py --check  # does every locked version have a file for each platform?

Pipenv resolves on the machine that runs it. For a package the Pipfile names with a marker that is
false here (``appnope`` on Linux, ``pywinpty`` off Windows), it writes a lock entry with the marker
but no version and no hashes, and ``pipenv install`` on the platform that needs it would then fail
(pip requires a hash for every requirement once one has one). This script fills in such entries
with the newest release that satisfies the Pipfile's version range and Python 3.11, and the sha256
of each of its files, read from the lock's own package index (its JSON simple API). Everything else
stays as ``pipenv lock`` wrote it. ``tests/test_lock.py`` checks the markers for every platform.

Run it on Linux x86_64 (it refuses elsewhere): there Pipenv resolves torch's CUDA packages to the
exact versions torch pins, and only macOS and Windows packages are left to fill in. On a Mac the
CUDA packages would be the unresolvable ones, and the newest release is not the one torch pins.

``--check`` asks the index, for every locked package that applies on a platform (by its marker), for
a file that installs there on CPython 3.11: a wheel whose tags fit, or an sdist (which pip builds),
and whose sha256 is among the lock's hashes. It needs the network, so it is not part of the tests.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

from packaging.markers import Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parent.parent
PYTHON = Version("3.11")


def _index(lock: dict) -> str:
    """The lock's own package index (its first source)."""
    return lock["_meta"]["sources"][0]["url"].rstrip("/")


def _files(index: str, name: str) -> list[dict]:
    request = urllib.request.Request(
        f"{index}/{canonicalize_name(name)}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        try:
            return json.load(response)["files"]
        except (json.JSONDecodeError, KeyError) as err:
            raise SystemExit(f"{index} answered no JSON simple API for {name} ({err}); use an index that has one") from err


def _version_of(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (ValueError, InvalidVersion):
        return None


def newest_release(index: str, name: str, specifier: SpecifierSet) -> tuple[Version, list[str]]:
    """The newest non-yanked release in ``specifier`` that admits Python 3.11, and its files' hashes."""
    releases: dict[Version, list[dict]] = {}
    for file in _files(index, name):
        version = _version_of(file["filename"])
        if version is None or version.is_prerelease or file.get("yanked"):
            continue
        try:
            if file.get("requires-python") and PYTHON not in SpecifierSet(file["requires-python"]):
                continue
        except InvalidSpecifier:
            continue
        if version in specifier:
            releases.setdefault(version, []).append(file)
    if not releases:
        raise SystemExit(f"{name}: no release satisfies {specifier or 'any version'} for Python 3.11")
    best = max(releases)
    return best, sorted(f"sha256:{f['hashes']['sha256']}" for f in releases[best])


def complete(lock: dict, pipfile: dict) -> list[str]:
    """Fill in version and hashes of every Pipfile entry with a marker that the lock left empty."""
    index = _index(lock)
    done = []
    for section, lock_section in (("packages", "default"), ("dev-packages", "develop")):
        for name, spec in pipfile.get(section, {}).items():
            if not isinstance(spec, dict) or "markers" not in spec:
                continue
            key = next((k for k in lock[lock_section] if canonicalize_name(k) == canonicalize_name(name)), name)
            entry = lock[lock_section].setdefault(key, {})
            if entry.get("version") and entry.get("hashes"):
                continue
            wanted = spec.get("version", "*")
            version, hashes = newest_release(index, name, SpecifierSet("" if wanted == "*" else wanted))
            entry.update(version=f"=={version}", hashes=hashes, markers=spec["markers"])
            done.append(f"{name}=={version} ({len(hashes)} files; {spec['markers']})")
    return done


_PY = {"python_version": "3.11", "python_full_version": "3.11.9", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "implementation_version": "3.11.9", "platform_release": "",
       "platform_version": "", "extra": ""}  # fmt: skip
# The platforms the lock is made for, as marker environments (tests/test_lock.py evaluates with these too)
MARKER_ENVIRONMENTS = {
    "linux-x86_64": {**_PY, "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
    "linux-aarch64": {**_PY, "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"},
    "macos-arm64": {**_PY, "sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"},
    "macos-x86_64": {**_PY, "sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64", "os_name": "posix"},
    "windows-amd64": {**_PY, "sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64", "os_name": "nt"},
}  # fmt: skip
# ... and the wheel platform tags that install on each
WHEEL_PLATFORMS = {
    "linux-x86_64": [f"manylinux_2_{m}_x86_64" for m in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"],
    "linux-aarch64": [f"manylinux_2_{m}_aarch64" for m in range(39, 16, -1)] + ["manylinux2014_aarch64"],
    "macos-arm64": list(mac_platforms((14, 0), "arm64")),
    "macos-x86_64": list(mac_platforms((14, 0), "x86_64")),
    "windows-amd64": ["win_amd64"],
}  # fmt: skip



def check(lock: dict) -> int:
    """Print, per platform, the locked packages that have no installable file there; 0 if none."""
    index = _index(lock)
    entries = {canonicalize_name(k): v for s in ("develop", "default") for k, v in lock[s].items() if "version" in v}
    files = {name: _files(index, name) for name in sorted(entries)}
    problems = 0
    for target, env in MARKER_ENVIRONMENTS.items():
        platform_tags = WHEEL_PLATFORMS[target]
        tags = set(cpython_tags((3, 11), ["cp311", "abi3", "none"], platform_tags)) | set(
            compatible_tags((3, 11), "cp311", platform_tags)
        )
        wheels = sdists = 0
        missing = []
        for name, entry in entries.items():
            if entry.get("markers") and not Marker(entry["markers"]).evaluate(env):
                continue
            version, hashes = Version(entry["version"].lstrip("=")), set(entry.get("hashes", []))
            mine = [f for f in files[name] if _version_of(f["filename"]) == version
                    and f"sha256:{f['hashes']['sha256']}" in hashes]  # fmt: skip
            if any(f["filename"].endswith(".whl") and tags & set(parse_wheel_filename(f["filename"])[3]) for f in mine):
                wheels += 1
            elif any(not f["filename"].endswith(".whl") for f in mine):
                sdists += 1
            else:
                missing.append(f"{name}=={version}")
        problems += bool(missing) and target != "macos-x86_64"  # no torch wheels for Intel Macs at all
        print(f"{target}: {wheels} wheels, {sdists} sdists only" + (f"; NO FILE for {', '.join(missing)}" if missing else ""))
    return 1 if problems else 0


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        return check(json.loads((REPO / "Pipfile.lock").read_text()))
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit("re-lock on Linux x86_64 (see this script's docstring); --check runs anywhere")
    subprocess.run(["pipenv", "lock", *sys.argv[1:]], cwd=REPO, check=True)
    path = REPO / "Pipfile.lock"
    lock = json.loads(path.read_text())
    pipfile = tomllib.loads((REPO / "Pipfile").read_text())
    for line in complete(lock, pipfile):
        print("completed", line)
    path.write_text(json.dumps(lock, indent=4, sort_keys=True) + "\n", newline="\n")  # as Pipenv writes it
    return 0


if __name__ == "__main__":
    sys.exit(main())
