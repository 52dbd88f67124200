"""Compatibility imports: backbone training now lives in :mod:`ausil_search.train`."""

from ..train.backbone_trainer import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    BackboneStep,
    BackboneTrainer,
    BackboneTrainingJob,
    nt_xent,
    train_backbone,
    train_backbone_model,
)
from ..train.configs import RECIPE_VERSION, BackboneTrainConfig, ViewRecipe
from ..train.backbone_views import (
    AudioCorpus,
    ViewBatch,
    ViewBatches,
    centre_window,
    draw_view_chain,
    make_view_batch,
    measure_view_throughput,
    plan_excerpts,
    repeat_correlation,
)

StepRecord = BackboneStep

__all__ = [name for name in dir() if not name.startswith("_")]
