"""Segmentation metrics, host-side NumPy/SciPy: the paper's per-slice Dice over logit thresholds, legacy
volumetric Dice/HD95, BraTS 2023 lesion-wise Dice/HD95, and interactive NoC summaries."""

from sam_jax.metrics.errors import MetricInputError
from sam_jax.metrics.interactive import (
    NOC_MAX_CLICKS,
    clicks_to_reach,
    mean_dice_after_clicks,
    mean_noc,
    noc_failures,
    noc_summary,
)
from sam_jax.metrics.lesion_wise import (
    BRATS_2023_LESION_RULES,
    LesionRule,
    LesionScore,
    LesionWiseResult,
    lesion_wise_scores,
    merged_gt_lesions,
)
from sam_jax.metrics.slice_dice import PAPER_LOGIT_THRESHOLDS, dice_per_slice, paper_scores, paper_slice_dice
from sam_jax.metrics.volumetric import BRATS_MAX_HD95, dice_3d, hd95

__all__ = [
    "BRATS_2023_LESION_RULES",
    "BRATS_MAX_HD95",
    "LesionRule",
    "LesionScore",
    "LesionWiseResult",
    "MetricInputError",
    "NOC_MAX_CLICKS",
    "PAPER_LOGIT_THRESHOLDS",
    "clicks_to_reach",
    "dice_3d",
    "dice_per_slice",
    "hd95",
    "lesion_wise_scores",
    "mean_dice_after_clicks",
    "mean_noc",
    "merged_gt_lesions",
    "noc_failures",
    "noc_summary",
    "paper_scores",
    "paper_slice_dice",
]
