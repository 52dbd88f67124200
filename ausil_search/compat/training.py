"""Compatibility imports: head training now lives in :mod:`ausil_search.train`."""

from ..media.sources import PATH_LIST_SUFFIXES, collect_media
from ..media.audio import load_audio
from ..train.descriptors import DescriptorCache, DescriptorSource, backbone_fingerprint
from ..train.configs import SelfSupervisedConfig, TrainConfig
from ..train.examples import Example, augment_fingerprint, self_supervised_examples
from ..train.head_job import TrainingJob, build_pool, fit_model_whitening, fit_whitening_model, train_head, train_model
from ..train.head_trainer import CHECKPOINT_FILE, CHECKPOINT_FORMAT, HeadStep, HeadTrainer
from ..train.head_trainer import chamfer_separation
from ..train.mining import MiningReport, global_features, mine_hard_negatives
from ..train.pools import TripletPool, annotation_pool, examples_pool, merge_pools, split_pool, validation_pairs
from ..train.reports import HeadLossSummary, HeadTrainingReport, WhiteningReport
from ..train.scaffold import TrainedModel, read_checkpoint
from ..train.whitening import WhiteningFit, fit_whitening, fit_whitening_report

StepRecord = HeadStep


def decode_prefix(path, sample_rate: int, max_seconds: float):
    """The first `max_seconds` of a file's audio (all of it for ``math.inf``): now ``media.audio.load_audio``."""
    return load_audio(path, sample_rate, max_seconds)


def loss_summary(history, buckets: int = 10) -> dict:
    """The head's loss summary as it was returned before reports were typed (a dict; {} without steps)."""
    summary = HeadLossSummary.of(history, buckets)
    return summary.to_dict() if summary else {}


__all__ = [name for name in dir() if not name.startswith("_")]
