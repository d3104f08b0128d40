"""Training: the config, token data, the loop (DDP-ready), checkpoints, sampling and evaluation."""
from .config import TrainConfig, build_model
from .inference import evaluate_checkpoint, load_checkpoint, sample
from .loop import TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "build_model", "evaluate_checkpoint", "load_checkpoint", "sample", "train"]
