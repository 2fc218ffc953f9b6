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


def _package_imports() -> dict[str, set[str]]:
    """Each vqvae_lib module and the vqvae_lib modules it imports, anywhere in the file (lazy too)."""
    import ast

    graph = {}
    for path in sorted((REPO / "vqvae_lib").glob("*.py")):
        name = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vqvae_lib."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vqvae_lib.")}
        graph[name] = found - {name}
    return graph


def test_the_library_has_no_import_cycle():
    graph = _package_imports()
    assert graph["runtime"] == set() and graph["paths"] == set(), "runtime and paths import nothing of ours"
    # arrows point down: the models know nothing of files, training or the command line
    assert not ({"checkpoint", "training", "paths", "cli"} & (graph["model"] | graph["quantizer"])), graph["model"]

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen and nxt != "__init__":
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    for module in graph:
        if module != "__init__":
            assert cycle_from(module, module, (module,)) is None, " -> ".join(cycle_from(module, module, (module,)))


def test_vqvae_lib_train_is_the_training_function_whatever_was_imported():
    """A submodule named ``train`` would replace the function on the package once anything imported it."""
    import importlib
    import pkgutil

    import vqvae_lib
    from vqvae_lib.training import train

    for module in pkgutil.iter_modules(vqvae_lib.__path__):
        if module.name != "__main__":
            importlib.import_module(f"vqvae_lib.{module.name}")
    assert vqvae_lib.train is train and callable(vqvae_lib.train)


def _library_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((REPO / "vqvae_lib").glob("*.py"))}


def test_one_home_for_each_concern():
    sources = _library_sources()
    # one training loop: fit is the only code that backpropagates a loss into parameters' .grad
    # (torch.autograd.grad, which returns gradients and updates nothing, is how the exercise checkers
    # inspect an answer)
    backward = re.compile(r"\.backward\(|autograd\.backward")
    assert [name for name, text in sources.items() if backward.search(text)] == ["training.py"]
    assert len(backward.findall(sources["training.py"])) == 1
    # every torch.distributed call goes through runtime.py's helpers (mentions in docstrings aside)
    distributed = re.compile(r"(?<!``)torch\.distributed|from torch import .*\bdistributed\b")
    assert [name for name, text in sources.items() if distributed.search(text)] == ["runtime.py"]
    # the notebooks know the library, not the other way round
    assert not [name for name, text in sources.items() if re.search(r"\d\d_\w+\.ipynb", text)]


def test_no_library_file_holds_more_than_12_percent_of_the_library_lines():
    lines = {name: text.count("\n") for name, text in _library_sources().items()}
    total = sum(lines.values())
    largest = max(lines, key=lines.get)
    assert lines[largest] <= 0.12 * total, f"{largest}: {lines[largest]} of {total} lines ({lines[largest] / total:.1%})"
