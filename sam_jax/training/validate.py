"""Scores during and after training: the paper's per-slice Dice protocol on whole volumes, at the decoder's grid.

For each volume every axial slice is decoded from one click (the paper's positive click, a random one on empty
slices), per-slice Dice (empty/empty = 1) is averaged over the slices and over the logit thresholds
{0.1, 0.3, 0.5, 0.7, 0.9}, then over volumes. The evaluation app (`eval/`) scores at the native grid as well.
"""

from __future__ import annotations

from collections import defaultdict

import jax
import numpy as np

from sam_jax.data.pipeline import make_dataset
from sam_jax.metrics import paper_scores


def low_res_predictions(forward, cache, case_ids, *, modalities, slices: int, batch_size: int, seed: int,
                        max_slices: int = 0, put=lambda b: b):
    """Per case: (logits (Z, h, w), soft targets (Z, h, w)) in slice order, from `forward(batch, rng)`."""
    dataset = make_dataset(cache, case_ids, z=slices, slice_policy="all", click_policy="paper",
                           modalities=modalities, batch_size=batch_size, seed=seed, shuffle=False, num_epochs=1)
    per_case = defaultdict(list)
    done = 0
    for i in range(len(dataset)):
        batch = dataset[i]
        n = len(batch["case_index"])
        if n % batch_size:  # pad the last batch to the compiled shape
            batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in batch.items()}
        logits, _, target = forward(put(batch), jax.random.PRNGKey(seed + i))
        z = slices // 2  # score each stack's centre slice
        logits = np.asarray(logits[:, 0]).reshape(batch_size, slices, *logits.shape[-2:])[:n, z]
        target = np.asarray(target).reshape(batch_size, slices, *target.shape[-2:])[:n, z]
        for j in range(n):
            per_case[int(batch["case_index"][j])].append((int(batch["slice_index"][j]), logits[j], target[j]))
        done += n
        if max_slices and done >= max_slices:
            break
    out = {}
    for case_index, items in per_case.items():
        items.sort(key=lambda t: t[0])
        out[cache.case_ids[case_index]] = (np.stack([t[1] for t in items]), np.stack([t[2] for t in items]))
    return out


def paper_dice(predictions) -> dict:
    """Per case the paper's score (`sam_jax.metrics.paper_scores`, at the decoder's grid), and the means over
    volumes of it and of the tumour-slice Dice."""
    scores = {case: paper_scores(logits, target > 0.5) for case, (logits, target) in predictions.items()}
    tumour = [s["tumour_slice_dice"] for s in scores.values() if not np.isnan(s["tumour_slice_dice"])]
    return {"per_case": {case: s["paper_dice"] for case, s in scores.items()},
            "mean": float(np.mean([s["paper_dice"] for s in scores.values()])) if scores else float("nan"),
            "tumour_slice_dice": float(np.mean(tumour)) if tumour else float("nan")}
