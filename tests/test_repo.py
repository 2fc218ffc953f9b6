"""The repository's promises: the README's commands are what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_starts_with_the_two_setup_commands():
    first, second = _readme_commands()[:2]
    assert first.startswith("pip install pipenv && pipenv install --dev") and "jupyter lab notebooks/" in first
    assert second.startswith("pip install pipenv && pipenv install --dev") and second.endswith("pipenv run pytest")


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1].split("&&", 1)[1].strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci if not line.lstrip().startswith("#")]


def test_pipfile_pins_torch_and_has_no_custom_index():
    pipfile = (REPO / "Pipfile").read_text()
    assert 'torch = "==2.14.1"' in pipfile and 'torchvision = "==0.29.1"' in pipfile
    assert "[[source]]" not in pipfile and "url" not in pipfile
