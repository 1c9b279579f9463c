"""Volumetric scores of a native-grid whole-tumour prediction: legacy 3-D Dice and HD95, and BraTS 2023
lesion-wise Dice and HD95 with the domain's rules (`sam_jax.metrics.lesion_wise`)."""

from __future__ import annotations

import numpy as np

from sam_jax.metrics import lesion_wise_scores


def volumetric_scores(prediction: np.ndarray, truth: np.ndarray, spacing, domain: str) -> dict:
    # The lesion-wise result carries the legacy whole-volume scores: HD95 of a real case's volume takes seconds.
    lesions = lesion_wise_scores(prediction, truth, spacing, domain=domain)
    return {
        "dice_3d": lesions.legacy_dice,
        "hd95": lesions.legacy_hd95,
        "lesion_dice": lesions.dice,
        "lesion_hd95": lesions.hd95,
        "lesions_tp": lesions.num_true_positive,
        "lesions_fn": lesions.num_false_negative,
        "lesions_fp": lesions.num_false_positive,
    }
