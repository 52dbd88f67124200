"""Training: the AuSiL head on a frozen backbone, and the backbone itself, self-supervised.

Head (`ausil-search train`, `fit-whitening`), in the order a run uses the modules:
:mod:`.descriptors` (frozen-backbone descriptors, cached) → :mod:`.examples` (self-supervised
examples) → :mod:`.pools` (triplet pools) → :mod:`.whitening` → :mod:`.mining` (hard negatives) →
:mod:`.head_trainer` → :mod:`.head_job` (the whole run).

Backbone (`ausil-search train-backbone`): :mod:`.backbone_views` (batches of augmented views) →
:mod:`.backbone_trainer`.

Both trainers share :mod:`.scaffold` (checkpoints, resume checks, Ctrl-C, step records),
:mod:`.configs` (settings and jobs) and :mod:`.reports` (the typed reports they return). The
model's maths live in :mod:`ausil_search.model.head` and :mod:`ausil_search.features.backbone`, and
descriptors come from :mod:`ausil_search.features.extraction`: training calls them, it does not copy them.
"""
