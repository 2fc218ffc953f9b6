"""vqvae_lib: a small, tested VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

    from vqvae_lib import VQVAE, load_dataset, make_loader, train, evaluate
"""

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .data import (
    BatchLoader,
    DatasetFileError,
    DatasetNotFoundError,
    TensorImageDataset,
    make_loader,
)
from .image_folder import ImageFolderDataset, held_out
from .interpolation import interpolate_latents, save_gif
from .metrics import codes_used, evaluate, nmse, perplexity, psnr
from .fsq import FiniteScalarQuantizer
from .model import QUANTIZERS, VQVAE, Decoder, Encoder, ResidualBlock, ResidualStack, VQVAEConfig, build_quantizer, loss_terms
from .paths import DATA_ROOT_ENV, checkpoint_dir, data_root, find_checkpoint, pretrained_dir, project_relative
from .prior import GatedPixelCNN, PriorConfig, evaluate_prior, extract_codes, train_prior
from .quantizer import (
    CodeUsage,
    QuantizerOutput,
    VectorQuantizer,
    VectorQuantizerEMA,
    kmeans,
    nearest_code,
    rotation_trick,
    squared_distances,
    straight_through,
)
from .residual_vq import ResidualVectorQuantizer
from .runtime import FAST_ENV, eval_mode, fast_mode, pick_device, seed_everything, unwrap
from .sampling import sample, sample_indices
from .sources import CIFAR10_CLASSES, load_dataset, load_test_set
from .training import FitConfig, TrainConfig, TrainResult, fit, train

__version__ = "0.1.0"

__all__ = [
    "BatchLoader", "CIFAR10_CLASSES", "Checkpoint", "CheckpointError", "CodeUsage", "FiniteScalarQuantizer", "QUANTIZERS",
    "ResidualVectorQuantizer", "build_quantizer", "rotation_trick", "straight_through", "DATA_ROOT_ENV", "DatasetFileError", "DatasetNotFoundError", "Decoder", "Encoder",
    "FAST_ENV", "FitConfig", "GatedPixelCNN", "ImageFolderDataset", "PriorConfig", "QuantizerOutput", "ResidualBlock", "ResidualStack",
    "TensorImageDataset", "TrainConfig", "TrainResult", "VQVAE", "VQVAEConfig", "VectorQuantizer", "VectorQuantizerEMA",
    "checkpoint_dir", "codes_used", "data_root", "eval_mode", "evaluate", "evaluate_prior",
    "extract_codes", "fast_mode", "held_out", "fit", "find_checkpoint", "interpolate_latents", "kmeans", "load_checkpoint",
    "load_dataset", "load_test_set", "loss_terms", "make_loader", "nearest_code", "nmse", "perplexity",
    "pick_device", "pretrained_dir", "project_relative", "psnr", "read_checkpoint", "sample", "sample_indices", "save_checkpoint",
    "save_gif", "seed_everything", "squared_distances", "train", "train_prior", "unwrap",
]  # fmt: skip
