"""The interactive protocol on the tumour slices of a volume: RITM's clicks (`sam_jax.data.clicks.next_click`, the
interior-most point of the larger error), all slices decoded together each round from their encoder embeddings,
Dice after each of k = 1…K clicks per slice. A slice with nothing left to correct gets a padding click."""

from __future__ import annotations

import numpy as np

from sam_jax.data.clicks import NO_CLICK, next_click
from sam_jax.metrics import NOC_MAX_CLICKS, dice_per_slice


def ritm_dice_curves(
    segmenter, embeddings, tumour: np.ndarray, max_clicks: int = NOC_MAX_CLICKS, feed_back_mask: bool = False
) -> np.ndarray:
    """(N, H, W) target slices and their embeddings → (N, max_clicks) Dice after each click.

    `feed_back_mask`: pass the previous round's low-res logits as SAM's mask prompt (only useful for a model
    trained with it, i.e. prompt_rounds > 1)."""
    n, h, w = tumour.shape
    coords = np.zeros((n, 0, 2), np.float32)
    labels = np.zeros((n, 0), np.int32)
    clicked = np.zeros_like(tumour, bool)
    prediction = np.zeros_like(tumour, bool)
    low_res, curves = None, []
    for _ in range(max_clicks):
        new_coords = np.zeros((n, 1, 2), np.float32)
        new_labels = np.full((n, 1), NO_CLICK, np.int32)
        for i in range(n):
            click = next_click(tumour[i], prediction[i], clicked[i])
            if click is not None:
                (x, y), label = click
                new_coords[i, 0], new_labels[i, 0] = (x, y), label
                clicked[i, int(y), int(x)] = True
        coords = np.concatenate([coords, new_coords], axis=1)
        labels = np.concatenate([labels, new_labels], axis=1)
        low_res = segmenter.decode(embeddings, coords, labels, (h, w), mask_input=low_res if feed_back_mask else None)
        prediction = segmenter.to_slice_grid(low_res, (h, w)) > 0
        curves.append(dice_per_slice(prediction, tumour))
    return np.stack(curves, axis=1)
