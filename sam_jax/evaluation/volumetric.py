"""Volumetric scores of a native-grid whole-tumour prediction: legacy 3-D Dice and HD95, and BraTS 2023
lesion-wise Dice and HD95 with the domain's rules (`sam_jax.metrics.lesion_wise`)."""

from __future__ import annotations

import numpy as np

from sam_jax.metrics import dice_3d, hd95, lesion_wise_scores


def volumetric_scores(prediction: np.ndarray, truth: np.ndarray, spacing, domain: str) -> dict:
    lesions = lesion_wise_scores(prediction, truth, spacing, domain=domain)
    return {
        "dice_3d": dice_3d(prediction, truth),
        "hd95": hd95(prediction, truth, spacing),
        "lesion_dice": lesions.dice,
        "lesion_hd95": lesions.hd95,
        "lesions_tp": lesions.num_true_positive,
        "lesions_fn": lesions.num_false_negative,
        "lesions_fp": lesions.num_false_positive,
    }
