"""Training, evaluation and prediction: ``train(config)``, ``evaluate(weights, data)``, ``predict(weights, images)``.

Configs are YAML files mapped onto :class:`Config` (see ``configs/``); ``resnets train`` is the same
function behind a command line.
"""

from .checkpoint import CheckpointError, export_weights, load_checkpoint, load_weights, read_metadata
from .config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig, load_config
from .engine import (
    NonFiniteLossError,
    NonFiniteStateError,
    StepInfo,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
    sample_data_dir,
    train,
    train_step,
)
from .evaluate import evaluate, load_model, predict
from .optim import EMA, Schedule, build_optimizer, param_groups

__all__ = [
    "EMA", "CheckpointError", "Config", "DataConfig", "ModelConfig", "NonFiniteLossError", "NonFiniteStateError", "OptimConfig",
    "Schedule", "ScheduleConfig", "StepInfo", "TrainConfig", "TrainResult", "TrainingError", "TrainingInterrupted", "build_optimizer",
    "evaluate", "export_weights", "load_checkpoint", "load_config", "load_model", "load_weights",
    "param_groups", "predict", "read_metadata", "sample_data_dir", "train", "train_step",
]
