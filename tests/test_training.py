"""Training on real data, exact resume, interrupts, checkpoints, evaluation metrics."""

from __future__ import annotations

import re

import math
import time

import pytest
import torch

import vqvae_lib.checkpoint as checkpoint_module
from vqvae_lib import (
    VQVAE,
    CheckpointError,
    TrainConfig,
    evaluate,
    fast_mode,
    load_checkpoint,
    make_loader,
    read_checkpoint,
    pick_device,
    save_checkpoint,
    seed_everything,
    train,
)

SMALL = dict(in_channels=1, hidden_channels=32, residual_hidden_channels=16, embedding_dim=8, num_embeddings=32)


def _config(steps: int, **kw) -> TrainConfig:
    """Adam at a constant learning rate, no warm-up, no evaluation on the way: the settings the
    thresholds below were measured with."""
    return TrainConfig(**{"steps": steps, "lr": 2e-3, "lr_schedule": "constant", "warmup_steps": 0, "eval_every": 0, **kw})


def _model(**kw) -> VQVAE:
    seed_everything(0)
    return VQVAE(**{**SMALL, "ema": True, "data_init": "kmeans", "dead_code_threshold": 10, **kw})


def test_short_run_on_real_mnist_learns_and_keeps_codes_alive(mnist_small):
    train_set, test_set = mnist_small
    model = _model()
    before = evaluate(model, test_set)
    result = train(model, make_loader(train_set, 64, seed=0), _config(150), eval_loader=test_set, progress=False)
    after = result.final_eval
    h = result.history
    # The thresholds below are outcomes of 150 training steps, so they are set far from what was
    # measured on six kernel paths standing in for other CPUs (AVX-512 and AVX2 ATen kernels, no SIMD,
    # oneDNN capped at AVX2, oneDNN off, one thread): recon and MSE ratios 0.14-0.21 (< 0.5), NMSE
    # 0.156-0.195 (< 0.5), lowest perplexity 5.01-5.17 (> 4), final perplexity 15.4-18.7 (> 12),
    # 32 of 32 codes used (>= 24).
    assert len(h["total"]) == 150 and all(len(h[k]) == 150 for k in ("recon", "codebook", "commitment", "perplexity", "codes_used", "lr"))
    assert sum(h["recon"][-20:]) / 20 < 0.5 * sum(h["recon"][:20]) / 20
    assert after["mse"] < 0.5 * before["mse"]
    assert after["nmse"] < 0.5
    # of K = 32: a collapse sits at 1-2; the early dip (the encoder moves away from its k-means
    # initialisation) is repaired by dead-code restarts
    assert min(h["perplexity"]) > 4 and after["perplexity"] > 12
    assert after["codes_used"] >= 24


def test_evaluation_time_is_kept_off_the_training_clock(mnist_small, monkeypatch):
    # the benchmarks' targets are "test error after N seconds of training": evaluating the test set
    # on the way must not eat into that budget, and the time it takes is reported on its own
    import vqvae_lib.training as training

    train_set, test_set = mnist_small
    real_evaluate = training.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.5)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", slow_evaluate)
    t0 = time.perf_counter()
    result = train(_model(), make_loader(train_set, 64, seed=0), _config(30, eval_every=10), eval_loader=test_set,
                   progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    assert [e["step"] for e in result.history["eval"]] == [10, 20, 30]
    assert result.eval_seconds >= 1.5  # three evaluations, each at least the 0.5 s sleep
    assert result.seconds + result.eval_seconds <= wall
    assert result.seconds < wall - 1.5


def test_plain_quantizer_without_health_tricks_also_trains(mnist_small):
    train_set, test_set = mnist_small
    seed_everything(0)
    model = VQVAE(**SMALL)
    result = train(model, train_set, _config(100, batch_size=64), eval_loader=test_set, progress=False)
    assert result.final_eval["nmse"] < 0.9  # 0.27-0.28 on the six kernel paths above: trained, not collapsed
    assert model.quantizer.codebook.grad is not None  # the gradient codebook is trained by Adam


def test_resumed_run_continues_identically(mnist_small, tmp_path):
    train_set, _ = mnist_small
    config = _config(24, lr_schedule="cosine", warmup_steps=4, seed=7)

    straight = _model()
    train(straight, make_loader(train_set, 64, seed=7), config, progress=False)

    def stop_at_10(step, logs):
        if step == 10:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.pt"
    first = _model()
    interrupted = train(first, make_loader(train_set, 64, seed=7), config, checkpoint_path=ckpt, callback=stop_at_10,
                        progress=False)  # fmt: skip
    assert interrupted.interrupted and interrupted.steps == 10
    assert read_checkpoint(ckpt).step == 10

    seed_everything(123)  # a different global state must not matter: the checkpoint restores it
    resumed = VQVAE(**_model().config)
    result = train(resumed, make_loader(train_set, 64, seed=7), config, checkpoint_path=ckpt, resume=True, progress=False)
    assert result.steps == 24 and len(result.history["total"]) == 24
    # same process, same kernels, same batches in the same order: bitwise equal, on any machine
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_interrupt_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    model = _model()
    path = save_checkpoint(tmp_path / "model.pt", model, step=5)
    original = path.read_bytes()

    def half_written(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, step=6)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert read_checkpoint(path).step == 5


def test_folder_checkpoints_finds_every_model_of_a_folder_newest_first(tmp_path):
    # notebooks 8 and 9 offer every model of one's own photos: the one notebook 7 writes (my_images.pt) and
    # the one the command line names after the folder (holiday.pt), never a model of another dataset
    import os

    from vqvae_lib.checkpoint import folder_checkpoints

    model = _model()
    save_checkpoint(tmp_path / "mnist.pt", model)
    older = save_checkpoint(tmp_path / "my_images.pt", model, extra={"image_folder": "/photos/a", "image_size": 64})
    newer = save_checkpoint(tmp_path / "holiday.pt", model, extra={"image_folder": "/photos/b", "image_size": 128})
    os.utime(older, (1_000_000, 1_000_000))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="left out junk.pt"):
        found = folder_checkpoints(tmp_path)
    assert [path.name for path, _ in found] == ["holiday.pt", "my_images.pt"]
    assert found[0][1].extra == {"image_folder": "/photos/b", "image_size": 128}
    assert folder_checkpoints(tmp_path / "missing") == []


def test_checkpoint_rebuilds_its_model_and_refuses_another(tmp_path):
    model = _model()
    x = torch.rand(2, 1, 28, 28)
    path = save_checkpoint(tmp_path / "m.pt", model, step=3, history={"total": [1.0]})
    rebuilt = load_checkpoint(path)
    assert isinstance(rebuilt, VQVAE) and rebuilt.config == model.config
    assert not hasattr(rebuilt, "checkpoint_step")  # what the file holds besides the model comes from read_checkpoint
    saved = read_checkpoint(path)
    assert (saved.step, saved.history, saved.model_class) == (3, {"total": [1.0]}, "vqvae_lib.model:VQVAE")
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])

    other = VQVAE(**{**model.config, "num_embeddings": 64})
    with pytest.raises(CheckpointError, match="num_embeddings: checkpoint 32, model 64"):
        load_checkpoint(path, other)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a vqvae_lib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "cut.pt")


def test_the_loader_is_iterated_not_restarted_every_step(mnist_small):
    train_set, _ = mnist_small

    class CountingLoader:
        def __init__(self, loader):
            self.loader, self.iters = loader, 0

        def __iter__(self):
            self.iters += 1
            return iter(self.loader)

        def __len__(self):
            return len(self.loader)

    counting = CountingLoader(make_loader(train_set.subset(256), 64, seed=0))  # 4 batches an epoch
    train(_model(), counting, _config(10), progress=False)
    assert counting.iters == 3  # 10 steps = 2.5 epochs: three passes, not ten fresh iterators


def test_evaluate_reports_the_documented_metrics(mnist_small):
    _, test_set = mnist_small
    model = _model().eval()
    metrics = evaluate(model, make_loader(test_set, 100, shuffle=False))
    x = test_set.images.float() / 255
    with torch.no_grad():
        x_hat = torch.cat([model(x[i : i + 100])[0] for i in range(0, len(x), 100)])
        indices = torch.cat([model.encode_indices(x[i : i + 100]) for i in range(0, len(x), 100)])
    # the same reconstructions (same batches, so the same kernels), the reference summed in float64:
    # evaluate subtracts and squares in float32 (at most 3 roundings, 1.8e-7 relative per term) before
    # its float64 sums, and its variance, E[x^2] - E[x]^2, loses under a factor 2 to cancellation
    # here (worst case about 2.5e-7 on NMSE); 1e-6 leaves 4x room
    mse = float((x_hat.double() - x.double()).pow(2).mean())
    assert metrics["mse"] == pytest.approx(mse, rel=1e-6)
    assert metrics["nmse"] == pytest.approx(mse / float(x.double().var(unbiased=False)), rel=1e-6)
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert metrics["codes_used"] == torch.unique(indices).numel()


def test_fit_writes_one_history_for_any_model_and_stops_on_a_non_finite_loss():
    # the loop the VQ-VAE and the prior share, on a model that is neither: a line fitted to points
    from vqvae_lib import FitConfig, fit

    seed_everything(0)
    line = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = 3 * x + 1

    def loss_fn(batch, device):
        return {"mse": (line(x) - y).pow(2).mean()}

    config = FitConfig(steps=200, lr=0.05, lr_schedule="constant", warmup_steps=0, eval_every=50)
    result = fit(line, loss_fn, lambda start: iter(range(start, 10**6)), config, loss_key="mse",
                 evaluate_fn=lambda: {"slope": float(line.weight.detach())}, progress=False)  # fmt: skip
    assert result.history["step"] == list(range(1, 201)) and len(result.history["mse"]) == 200
    assert [e["step"] for e in result.history["eval"]] == [50, 100, 150, 200]
    # Adam at lr 0.05 for 200 steps on a 2-parameter least-squares problem: the loss falls from about
    # 10 to below 1e-2 (measured 3e-5); 0.1 on the slope is far outside float32 noise
    assert result.history["mse"][-1] < 1e-2 and abs(result.final_eval["slope"] - 3) < 0.1

    def exploding(batch, device):
        return {"mse": (line(x) - y).pow(2).mean() * (float("inf") if batch == 5 else 1.0)}

    with pytest.raises(FloatingPointError, match="at step 6"):
        fit(line, exploding, lambda start: iter(range(start, 10**6)), config, loss_key="mse", progress=False)
    line.reset_parameters()  # the infinite loss left NaN weights behind
    with pytest.raises(ValueError, match="ran out after step 10 of 200"):  # not a quiet short run
        fit(line, loss_fn, lambda start: iter(range(start, 10)), config, loss_key="mse", progress=False)


def test_steps_fast_replaces_steps_only_in_fast_mode_and_only_when_set(monkeypatch):
    monkeypatch.setenv("VQVAE_FAST", "1")
    assert TrainConfig(steps=30).run_steps == 30  # a config that sets no fast length runs what it says
    assert TrainConfig(steps=30, steps_fast=3).run_steps == 3
    monkeypatch.setenv("VQVAE_FAST", "0")
    assert TrainConfig(steps=30, steps_fast=3).run_steps == 30


def test_device_choice_and_fast_mode(monkeypatch):
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    assert pick_device("cpu").type == "cpu"
    monkeypatch.setenv("VQVAE_FAST", "1")
    assert fast_mode() and TrainConfig.preset("mnist").run_steps == TrainConfig.preset("mnist").steps_fast
    monkeypatch.setenv("VQVAE_FAST", "0")
    assert not fast_mode()


@pytest.mark.parametrize("name", ["mnist", "cifar10", "food101", "folder", "folder-128"])
def test_presets_build_models(name):
    cfg = TrainConfig.preset(name)
    model = cfg.build_model()
    size = cfg.image_size or (28 if name == "mnist" else 32)
    x = torch.rand(2, cfg.model.in_channels, size, size)
    assert model.eval()(x)[0].shape == x.shape  # eval: no codebook init from 2 images
    with pytest.raises(ValueError, match="no preset"):
        TrainConfig.preset("imagenet")
    if name == "folder-128":  # one more halving: the 16x16 grid of the 64x64 model
        assert model.latent_shape((128, 128)) == TrainConfig.preset("folder").build_model().latent_shape((64, 64)) == (16, 16)


def test_a_config_fits_itself_to_a_small_or_grayscale_folder():
    """17 photos cannot fill a batch of 32 (make_loader refuses it); a grayscale folder loads with 1 channel."""
    from vqvae_lib import TensorImageDataset, make_loader

    photos = TensorImageDataset(torch.zeros(17, 1, 64, 64, dtype=torch.uint8))
    cfg = TrainConfig.preset("folder")
    with pytest.raises(ValueError, match="batch_size 32 is larger than the 17 samples"):
        make_loader(photos, cfg.batch_size)
    fitted = cfg.for_dataset(photos)
    assert fitted.batch_size == 17 and fitted.model.in_channels == 1 and fitted.steps == cfg.steps
    assert len(make_loader(photos, fitted.batch_size)) == 1
    assert TrainConfig.preset("folder").for_dataset(TensorImageDataset(torch.zeros(100, 3, 8, 8, dtype=torch.uint8))).batch_size == 32


def test_the_command_line_trains_on_a_folder_and_writes_pictures(shared_root, tmp_path, monkeypatch, capsys):
    """One command: a small folder of real photos -> checkpoint (recording the folder), evaluation on the
    held-out part, a reconstruction grid PNG and an interpolation GIF."""
    import shutil

    from PIL import Image

    from vqvae_lib import read_checkpoint
    from vqvae_lib.cli import main

    folder = tmp_path / "holiday"
    folder.mkdir()
    for photo in sorted((shared_root / "food-101-sample" / "food-101" / "images").rglob("*.jpg"))[:19]:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path / "runs" / "holiday.pt"
    with pytest.raises(SystemExit, match="--preset mnist is for mnist"):  # not MNIST read from the folder
        main(["--folder", str(folder), "--preset", "mnist", "--steps", "1"])
    assert main(["--folder", str(folder), "--image-size", "32", "--steps", "12", "--hidden-channels", "16",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "19 images: " in printed and "held out to test on; batches of" in printed
    assert re.search(r"test \(the \d+ held-out image\(s\)\): NMSE [\d.]+", printed)
    assert re.search(r"training \(1\d of the 1\d training images\): NMSE [\d.]+", printed)
    saved = read_checkpoint(out)
    assert saved.step == 12 and saved.extra == {"image_folder": str(folder.resolve()), "image_size": 32}
    grid, gif = out.with_name("holiday_reconstructions.png"), out.with_name("holiday_interpolation.gif")
    assert Image.open(grid).size[0] > 400
    with Image.open(gif) as frames:
        assert frames.n_frames >= 16 and frames.size == (128, 128)


def test_every_vqvae_argument_is_reachable_from_a_train_config_and_the_command_line():
    # one declaration (VQVAEConfig) for VQVAE, TrainConfig and the CLI: a field VQVAE drops on the way
    # to its parts (as eps once was for TrainConfig) leaves the built model unchanged, and fails here
    import dataclasses

    from vqvae_lib import VQVAEConfig
    from vqvae_lib.cli import build_parser, config_from_args

    def described(model: VQVAE) -> tuple:
        q = model.quantizer
        settings = {k: v for k, v in vars(q).items() if not k.startswith("_") and not isinstance(v, torch.Tensor)}
        return repr(model), type(q).__name__, sorted(settings.items()), model.downsample

    changed = dict(in_channels=3, hidden_channels=32, num_residual_layers=1, residual_hidden_channels=8,
                   embedding_dim=4, num_embeddings=64, beta=0.5, downsample=2, ema=False, decay=0.9, eps=1e-3,
                   data_init="random", dead_code_threshold=5, quantizer="cosine", gradient="rotation",
                   lookup_dim=4, levels=(4, 4, 8), stage_sizes=(4, 4, 8))  # fmt: skip
    # fields that only act on one quantizer are compared with that quantizer on both sides
    context = {"lookup_dim": dict(quantizer="cosine"), "levels": dict(quantizer="fsq", levels=(8, 4, 4)),
               "stage_sizes": dict(quantizer="residual", stage_sizes=(8, 4, 4))}  # fmt: skip
    assert set(changed) == {f.name for f in dataclasses.fields(VQVAEConfig)}  # a new field needs a value here
    for name, value in changed.items():
        base = TrainConfig.preset("mnist", **context.get(name, {}))
        cfg = TrainConfig.preset("mnist", **{**context.get(name, {}), name: value})
        assert getattr(cfg.model, name) == value != getattr(base.model, name), name
        model = cfg.build_model()
        assert model.config[name] == value, name
        # decay and eps act on the EMA codebook: compare with EMA on, as the preset has it
        assert described(model) != described(base.build_model()), f"{name} does not reach the model"
        given = [f"--{k.replace('_', '-')}={v}" for k, v in context.get(name, {}).items() if k != name]
        args = build_parser().parse_args(["--preset", "mnist", *given, f"--{name.replace('_', '-')}", str(value)])
        assert getattr(config_from_args(args).model, name) == value, f"--{name} does not reach the config"
    args = build_parser().parse_args(["--preset", "mnist", "--data-init", "none"])
    assert config_from_args(args).model.data_init is None  # "none" sets a field to None, not "not given"
