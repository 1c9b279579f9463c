"""The box protocol on one volume, as the box-prompted SAMs (MedSAM, GBT-SAM) are scored: each tumour slice decoded
from its tight ground-truth box alone, and again from that box jittered as in training (each side widened by a
random 0…`BOX_SHIFT` pixels, `sam_jax.data.boxes`, from a seeded generator); per-slice Dice at logit 0 averaged over
the tumour slices. Slices without tumour have no box to give and are not scored."""

from __future__ import annotations

import numpy as np

from sam_jax.data.boxes import boxes_per_slice
from sam_jax.metrics import dice_per_slice


def box_scores(segmenter, embeddings, tumour: np.ndarray, rng: np.random.Generator) -> dict:
    """(Z, H, W) tumour and its slices' embeddings → {box_dice, box_jitter_dice}; {} without tumour."""
    has_tumour = np.flatnonzero(tumour.any(axis=(1, 2)))
    if has_tumour.size == 0:
        return {}
    hw, target = tumour.shape[1:], tumour[has_tumour]
    scores = {}
    for name, generator in (("box_dice", None), ("box_jitter_dice", rng)):
        boxes, _ = boxes_per_slice(target, generator)
        low = segmenter.decode(embeddings[has_tumour], None, None, hw, boxes=boxes)
        scores[name] = float(np.mean(dice_per_slice(segmenter.to_slice_grid(low, hw) > 0, target)))
    return scores
