"""Compatibility imports: backbone training now lives in :mod:`ausil_search.train`."""

from .train.backbone_trainer import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    BackboneStep,
    BackboneTrainConfig,
    BackboneTrainer,
    BackboneTrainingJob,
    nt_xent,
    train_backbone,
)
from .train.backbone_views import (
    RECIPE_VERSION,
    AudioCorpus,
    ViewBatch,
    ViewBatches,
    ViewRecipe,
    centre_window,
    draw_view_chain,
    make_view_batch,
    measure_view_throughput,
    plan_excerpts,
    repeat_correlation,
)

StepRecord = BackboneStep

__all__ = [name for name in dir() if not name.startswith("_")]
