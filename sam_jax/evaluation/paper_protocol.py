"""The paper's protocol on one volume: one click per slice (uniform in the tumour; on an empty slice a random point,
also labelled positive, as the paper's code does), per-slice Dice (empty/empty = 1) averaged over slices and over
the logit thresholds {0.1, 0.3, 0.5, 0.7, 0.9}. Scored on the slices as the model sees them (the brain crop when the
run crops, as the paper does) at their own pixel size, not the resized frame. Training's validation of a run with
broadcast clicks prompts its volumes by `paper_prompts` too (`sam_jax.training.validate`)."""

from __future__ import annotations

import zlib

import numpy as np

from sam_jax.data.clicks import slice_click
from sam_jax.metrics import paper_scores
from sam_jax.model.frame import original_code_prompts


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """Clicks depend on (seed, case) only, not on which other cases are scored or in what order."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])


def paper_clicks(tumour: np.ndarray, rng: np.random.Generator):
    """(Z, H, W) tumour → coords (Z, 1, 2) in (x, y) and labels (Z, 1)."""
    drawn = [slice_click(t, rng, "paper") for t in tumour]
    return np.stack([p for p, _ in drawn])[:, None], np.array([[label] for _, label in drawn], np.int32)


def paper_prompts(tumour: np.ndarray, rng: np.random.Generator, broadcast: bool):
    """Each slice's prompt: its own click, or with `broadcast` (the original code: one prompt of every slice's click)
    the clicks of all Z slices → coords (Z, Z, 2) and labels (Z, Z)."""
    coords, labels = paper_clicks(tumour, rng)
    if broadcast:
        coords, labels = original_code_prompts(coords, labels, click_order="xy", broadcast=True)
    return coords, labels


def run_paper_protocol(segmenter, embeddings, tumour: np.ndarray, rng: np.random.Generator) -> dict:
    hw = tumour.shape[1:]
    coords, labels = paper_prompts(tumour, rng, getattr(segmenter, "broadcast_clicks", False))
    logits = segmenter.to_slice_grid(segmenter.decode(embeddings, coords, labels, hw), hw)
    return paper_scores(logits, tumour)
