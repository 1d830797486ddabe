"""Training: the two stages as library calls, the one loop they share, its config, LR schedules, metrics, DDP.

    from sifirdan.train import pretrain, finetune, PretrainSettings, FinetuneSettings, RunSettings

    base = pretrain(PretrainSettings(source=["nutuk.txt"]), RunSettings(out="runs/nutuk"), log=print)
    qa = finetune(FinetuneSettings(model=base.run_dir, data="nutuk_qa.jsonl"), RunSettings(out="runs/qa"))

``pretraining.py`` and ``finetuning.py`` are the stages (settings -> a run directory; ``StageResult``);
``layering.py`` layers a run's configs; ``stage.py`` holds what both share (``RunSettings``, the run
directory's life); ``pretrain_data.py`` / ``finetune_data.py`` turn token bins / instruction examples into
the batches the loop (``trainer.py``: ``Trainer``, ``TrainData``) draws.
"""

from sifirdan.train.config import RESUMABLE_FIELDS, TRAIN_PRESETS, TrainConfig
from sifirdan.train.finetuning import RECIPES, FinetuneSettings, finetune
from sifirdan.train.pretraining import PretrainSettings, pretrain
from sifirdan.train.schedule import lr_at
from sifirdan.train.stage import RunSettings, StageResult
from sifirdan.train.trainer import BatchSource, Trainer, TrainData, TrainResult, make_optimizer, stream_index

__all__ = [
    "BatchSource",
    "FinetuneSettings",
    "PretrainSettings",
    "RECIPES",
    "RESUMABLE_FIELDS",
    "RunSettings",
    "StageResult",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "Trainer",
    "finetune",
    "lr_at",
    "make_optimizer",
    "pretrain",
    "stream_index",
]
