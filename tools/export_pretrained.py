"""Copy full-mode checkpoints from data/checkpoints/ into data/pretrained/, the committed models.

    python tools/export_pretrained.py mnist cifar10 food101 mnist_prior cifar10_prior

Kept: the model's class, config and weights, the step, the training history (the notebooks plot it
when they load a committed model) and the RNG state. Dropped: the optimizer's and scheduler's state,
which only resuming needs and which would double the file. ``extra`` records which notebook trained it,
the machine that exports it (run this on the machine that trained), and its last test evaluation.

Refused, with a message: a checkpoint short of its preset's full-mode steps (a fast-mode run writes
to the same file); a prior whose VQ-VAE, the file it names as it is now, does not hold exactly the
weights of the committed VQ-VAE (steps alone cannot tell two runs of a preset apart); a VQ-VAE whose
committed prior is not exported in the same call (the prior would then belong to the old model).
VQ-VAEs are exported before priors whatever the order given.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from vqvae_lib.checkpoint import write_atomically
from vqvae_lib.paths import checkpoint_dir, pretrained_dir, project_dir, project_relative
from vqvae_lib.runtime import cpu_name

TRAINED_BY = {
    "mnist": "notebooks/05_mnist.ipynb",
    "cifar10": "notebooks/06_cifar10.ipynb",
    "food101": "notebooks/07_food101_and_your_own_images.ipynb",
    "mnist_prior": "notebooks/09_prior_and_sampling.ipynb",
    "cifar10_prior": "notebooks/09_prior_and_sampling.ipynb",
}
PRIOR_OF = {"mnist": "mnist_prior", "cifar10": "cifar10_prior"}


def machine() -> str:
    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu}), {gpu}, torch {torch.__version__.split('+')[0]}"


def _full_steps(name: str) -> int:
    if name.endswith("_prior"):
        from vqvae_lib import PriorConfig

        return PriorConfig.preset(name.removesuffix("_prior")).steps
    from vqvae_lib import TrainConfig

    return TrainConfig.preset(name).steps


def _load(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"{project_relative(path)} does not exist: run the notebook that trains it in full mode first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_prior(name: str, names: list[str]) -> None:
    """Refuse a prior unless the VQ-VAE it was trained on holds exactly the weights that will be committed
    beside it: the one exported in this call, else the one already committed. Run before anything is
    written, so that a prior trained on the committed model is compared with that model as it was."""
    source = _load(checkpoint_dir() / f"{name}.pt")
    recorded = (source.get("extra") or {}).get("vqvae")
    if not recorded:
        raise SystemExit(f"{name} does not record which VQ-VAE it was trained on")
    vqvae = Path(recorded).stem
    will_commit = checkpoint_dir() / f"{vqvae}.pt" if vqvae in names else pretrained_dir() / f"{vqvae}.pt"
    if not _same_weights(_load(project_dir() / recorded)["model_state"], _load(will_commit)["model_state"]):
        raise SystemExit(f"{name} was trained on the codes of {recorded}, whose weights differ from the VQ-VAE that "
                         f"would be committed beside it ({project_relative(will_commit)}): export that VQ-VAE with it, "
                         "or retrain the prior")


def export(name: str) -> Path:
    source, target = checkpoint_dir() / f"{name}.pt", pretrained_dir() / f"{name}.pt"
    state = _load(source)
    if state["step"] < _full_steps(name):
        raise SystemExit(f"{project_relative(source)} stopped at step {state['step']} of {_full_steps(name)}: "
                         "a fast-mode or interrupted run is not committed")
    evals = state["history"].get("eval") or []
    extra = dict(state.get("extra") or {})
    extra.update(trained_by=f"{TRAINED_BY[name]} in full mode", hardware=machine())
    if evals:
        extra["test_metrics"] = evals[-1]
    if name.endswith("_prior"):  # checked by check_prior before anything was written
        extra["vqvae"] = str(project_relative(pretrained_dir() / Path(extra["vqvae"]).name))
    state.update(optimizer_state=None, scheduler_state=None, extra=extra)
    write_atomically(state, target)  # as the library's own checkpoints: a committed model is never half written
    print(f"{project_relative(source)} -> {project_relative(target)}: step {state['step']}, "
          f"{target.stat().st_size / 1e6:.1f} MB, {extra.get('test_metrics', '')}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(TRAINED_BY))
    names = sorted(set(parser.parse_args().names), key=lambda n: (n.endswith("_prior"), n))
    stale = [f"{PRIOR_OF[n]} (trained on the committed {n})" for n in names
             if n in PRIOR_OF and PRIOR_OF[n] not in names and (pretrained_dir() / f"{PRIOR_OF[n]}.pt").exists()]
    if stale:
        raise SystemExit(f"exporting a VQ-VAE would leave its committed prior behind: also export {', '.join(stale)}")
    for name in names:
        if name.endswith("_prior"):
            check_prior(name, names)
    for name in names:
        export(name)


if __name__ == "__main__":
    main()
