"""Training: the one loop (pre-training today; any batch source), its config, LR schedules, metrics, DDP helpers.

    from sifirdan.train import Trainer, TrainConfig, TrainData
"""

from sifirdan.train.config import RESUMABLE_FIELDS, TRAIN_PRESETS, TrainConfig
from sifirdan.train.schedule import lr_at
from sifirdan.train.trainer import BatchSource, Trainer, TrainData, TrainResult, make_optimizer, stream_index

__all__ = [
    "BatchSource",
    "RESUMABLE_FIELDS",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "Trainer",
    "lr_at",
    "make_optimizer",
    "stream_index",
]
