"""Opening a file never runs code: checkpoints and CIFAR-10 batch files built to misbehave are refused
with a clear error, and nothing they carry is executed."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import vqvae_lib.sources
from vqvae_lib import (
    CheckpointError,
    DatasetFileError,
    TrainConfig,
    load_checkpoint,
    load_dataset,
    pretrained_dir,
    read_checkpoint,
    save_checkpoint,
)


class _Payload:
    """Unpickling this calls ``function(*args)``. The payloads here create a file, the visible trace of
    code run by a load (a real payload would run anything it likes the same way)."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def _creates_file(path: Path) -> _Payload:
    return _Payload(open, str(path), "w")


def _runs_shell(path: Path) -> _Payload:
    return _Payload(os.system, f"echo > {path}")  # a module torch's weights-only loader blocks outright


def _small_model():
    return TrainConfig.preset("mnist", hidden_channels=8, residual_hidden_channels=4).build_model()


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _small_model(), step=3)
    state = torch.load(good, weights_only=True)
    marker = tmp_path / "payload-ran"
    torch.save({**state, "extra": {"note": _creates_file(marker)}}, tmp_path / "opens.pt")
    torch.save({**state, "extra": {"note": _runs_shell(marker)}}, tmp_path / "shell.pt")
    assert not marker.exists()
    for name, refers_to in (("opens.pt", r"\S*open"), ("shell.pt", r"\S+\.system")):
        for load in (load_checkpoint, read_checkpoint):
            with pytest.raises(CheckpointError, match=f"refers to {refers_to}, .* not opened"):
                load(tmp_path / name)
            assert not marker.exists(), f"{load.__name__} ran code from {name}"


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    with pytest.raises(CheckpointError, match="not saved"):
        save_checkpoint(tmp_path / "run.pt", _small_model(), extra={"best": np.float64(0.5)})
    assert not list(tmp_path.iterdir()), "a partial or temporary file was left behind"


def test_broken_or_foreign_checkpoints_say_what_is_wrong(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _small_model(), step=3)
    state = torch.load(good, weights_only=True)
    cases = {}
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated.pt"] = "could not be read"
    torch.save({"state_dict": state["model_state"], "epoch": 3}, tmp_path / "other_program.pt")
    cases["other_program.pt"] = "not a vqvae_lib checkpoint"
    (tmp_path / "notes.pt").write_text("not a checkpoint at all")
    cases["notes.pt"] = "could not be read"
    torch.save({k: v for k, v in state.items() if k != "model_state"}, tmp_path / "no_weights.pt")
    cases["no_weights.pt"] = "lacks model_state"
    torch.save({**state, "model_config": {**state["model_config"], "wings": 2}}, tmp_path / "odd_config.pt")
    cases["odd_config.pt"] = "model_config does not build a VQVAE"
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "food101", "mnist_prior", "cifar10_prior"])
def test_committed_checkpoints_hold_only_tensors_and_plain_containers(name):
    state = torch.load(pretrained_dir() / f"{name}.pt", weights_only=True)  # raises on anything else
    load_checkpoint(pretrained_dir() / f"{name}.pt")
    assert read_checkpoint(pretrained_dir() / f"{name}.pt").step == state["step"] > 0


def test_resume_state_survives_a_weights_only_round_trip(tmp_path):
    """Optimizer, scheduler, RNG state and history are all plain data: a resumable checkpoint loads."""
    model = _small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model(torch.rand(2, 1, 28, 28))[0].sum().backward()
    optimizer.step()
    scheduler.step()
    path = save_checkpoint(tmp_path / "run.pt", model, optimizer, scheduler, step=1, history={"total": [0.5]})
    fresh = _small_model()
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 0.5)
    saved = read_checkpoint(path)
    saved.restore(fresh, fresh_optimizer, fresh_scheduler)
    assert fresh_scheduler.last_epoch == 1 and saved.history == {"total": [0.5]}
    assert torch.equal(saved.rng_state, torch.load(path, weights_only=True)["rng_state"])
    for a, b in zip(optimizer.state_dict()["state"].values(), fresh_optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def _hostile_cifar(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "note": _creates_file(marker)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))


def test_cifar_batch_files_that_are_not_the_published_ones_are_refused_unopened(tmp_path):
    marker = tmp_path / "payload-ran"
    _hostile_cifar(tmp_path / "cifar-10-batches-py", marker)
    with pytest.raises(DatasetFileError, match="data_batch_1 is not the published CIFAR-10 file"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert not marker.exists()


def test_cifar_reader_runs_no_code_even_when_a_checksum_matches(tmp_path, monkeypatch):
    """Second line of defence: were a hostile file to carry a published md5, the unpickler still admits
    only arrays, numbers, strings and containers."""
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "cifar-10-batches-py"
    _hostile_cifar(folder, marker)
    md5s = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(vqvae_lib.sources, "_cifar_md5s", lambda: md5s)
    with pytest.raises(DatasetFileError, match=r"refused to load \S*open"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert not marker.exists()


def test_cifar_reader_admits_what_the_published_files_are_made_of(tmp_path, monkeypatch):
    """The published batches were pickled by NumPy 1 (``numpy.core.multiarray._reconstruct``); NumPy 2
    writes ``numpy._core``. Both spellings load, into the same pixels."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data, labels = rng.integers(0, 256, (4, 3072), dtype=np.uint8), [3, 1, 4, 1]
    raw = pickle.dumps({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    md5s = {"test_batch": hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()}
    monkeypatch.setattr(vqvae_lib.sources, "_cifar_md5s", lambda: md5s)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert np.array_equal(test.images.reshape(4, -1).numpy(), data) and test.labels.tolist() == labels


def test_a_checkpoint_names_its_class_by_import_path_within_this_package(tmp_path):
    """The class comes from the file, so only vqvae_lib's own model classes may be named: a file that
    names ``subprocess:run`` with a config of arguments would otherwise run a command."""
    path = save_checkpoint(tmp_path / "good.pt", _small_model(), step=1)
    state = torch.load(path, weights_only=True)
    assert state["model_class"] == "vqvae_lib.model:VQVAE"
    marker = tmp_path / "payload-ran"
    for name, config in (("subprocess:run", {"args": ["touch", str(marker)]}), ("os:system", {"command": f"touch {marker}"}),
                         ("vqvae_lib.checkpoint:save_checkpoint", {}), ("vqvae_lib.model:NoSuchModel", {})):  # fmt: skip
        torch.save({**state, "model_class": name, "model_config": config}, tmp_path / "named.pt")
        with pytest.raises(CheckpointError, match="not one of vqvae_lib's models|not a model class|cannot build"):
            load_checkpoint(tmp_path / "named.pt")
        assert not marker.exists()
    # checkpoints written before import paths name the bare class, as the committed ones do
    torch.save({**state, "model_class": "VQVAE"}, tmp_path / "old.pt")
    assert type(load_checkpoint(tmp_path / "old.pt")).__name__ == "VQVAE"
