"""What the generative zero-shot methods share (ZS3Net/ZS5Net in :mod:`zeroseg.methods.zs3net`, ZS-MMD in
:mod:`zeroseg.methods.zs_mmd`).

- :mod:`~zeroseg.generative.features` -- frozen-segmenter features, per-class pixel sampling, the generator's
  real pixel sets, the stored feature bank;
- :mod:`~zeroseg.generative.generator` -- one generator step: seen-class MMD, and ZS-MMD's step that adds the
  confidence-weighted MMD on pseudo-features;
- :mod:`~zeroseg.generative.classifier` -- classifier retraining: class weights, the ``strict`` and
  ``official`` batches, the refit samples of a new class list, the linear classifier's step and fit, and its
  full-batch L-BFGS solve;
- :mod:`~zeroseg.generative.pseudo` -- ZS-MMD's pseudo-features and ZS5Net's top-p % pseudo-labels.

The stages that run these pieces (loaders, seeds, logging, checkpoints) stay in the method files.
"""

from zeroseg.generative.classifier import (
    WEIGHT_DECAY,
    LinearSolve,
    class_weights,
    classifier_criterion,
    classifier_optimizer,
    classifier_step,
    fit_linear_classifier,
    full_batch_sgd,
    linear_objective,
    official_batch,
    official_classifier_loss,
    official_classifier_optimizer,
    official_feature_maps,
    official_poly_lr,
    refit_samples,
    solve_linear_classifier,
    strict_batch,
)
from zeroseg.generative.features import (
    BANK_PER_CLASS,
    feature_bank,
    feature_batches,
    frozen_features,
    labels_at,
    official_pixel_sets,
    sample_pixels,
    seen_pixel_sets,
)
from zeroseg.generative.generator import generator_step, official_generator_step, zs_mmd_loss, zs_mmd_step
from zeroseg.generative.pseudo import draw_pseudo, pseudo_pools, select_pseudo_features, top_percent_labels

__all__ = [
    "BANK_PER_CLASS",
    "WEIGHT_DECAY",
    "LinearSolve",
    "class_weights",
    "classifier_criterion",
    "classifier_optimizer",
    "classifier_step",
    "draw_pseudo",
    "feature_bank",
    "feature_batches",
    "fit_linear_classifier",
    "frozen_features",
    "full_batch_sgd",
    "generator_step",
    "labels_at",
    "linear_objective",
    "official_batch",
    "official_classifier_loss",
    "official_classifier_optimizer",
    "official_feature_maps",
    "official_generator_step",
    "official_pixel_sets",
    "official_poly_lr",
    "pseudo_pools",
    "refit_samples",
    "sample_pixels",
    "seen_pixel_sets",
    "select_pseudo_features",
    "solve_linear_classifier",
    "strict_batch",
    "top_percent_labels",
    "zs_mmd_loss",
    "zs_mmd_step",
]
