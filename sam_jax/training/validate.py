"""Scores during and after training: the paper's per-slice Dice protocol on whole volumes, at the decoder's grid.

For each volume every axial slice is decoded from one click (the paper's positive click, a random one on empty
slices; a run trained with boxes gets each tumour slice's tight box instead of it or beside it, and no box
elsewhere), per-slice Dice (empty/empty = 1) is averaged over the slices and over the logit thresholds
{0.1, 0.3, 0.5, 0.7, 0.9}, then over volumes. The evaluation app (`eval/`) scores at the native grid as well.
"""

from __future__ import annotations

from collections import defaultdict

import grain
import jax
import numpy as np

from sam_jax.data.pipeline import make_dataset, select_slices
from sam_jax.metrics import paper_scores


def low_res_predictions(
    forward,
    cache,
    case_ids,
    *,
    modalities,
    slices: int,
    batch_size: int,
    seed: int,
    max_slices: int = 0,
    put=lambda b: b,
    shard=grain.sharding.NoSharding(),
    to_host=np.asarray,
    gather_rows=lambda rows: rows,
    prompt: str = "click",
):
    """Per case: (logits (Z, h, w), soft targets (Z, h, w)) in slice order, from `forward(batch, rng)`.

    Several processes: each loads its `shard` of every batch, `put` makes the global batch, `to_host` reads the
    outputs back whole and `gather_rows` joins the processes' row indices; every process returns the same result.
    `prompt`: the run's; boxes are the tight ones (no training jitter)."""
    dataset = make_dataset(
        cache,
        case_ids,
        z=slices,
        slice_policy="all",
        click_policy="paper",
        modalities=modalities,
        batch_size=batch_size,
        seed=seed,
        shuffle=False,
        num_epochs=1,
        shard=shard,
        pad_remainder=True,
        prompt=prompt,
        box_shift=0,
    )  # the last batch filled, to the compiled shape
    total = len(select_slices(cache, case_ids, slice_policy="all", click_policy="paper", seed=seed))
    per_case = defaultdict(list)
    done = 0
    for i in range(len(dataset)):
        batch = dataset[i]
        n = min(batch_size, total - i * batch_size)
        logits, _, target = forward(put(batch), jax.random.PRNGKey(seed + i))
        z = slices // 2  # score each stack's centre slice
        logits = to_host(logits[:, 0]).reshape(batch_size, slices, *logits.shape[-2:])[:n, z]
        target = to_host(target).reshape(batch_size, slices, *target.shape[-2:])[:n, z]
        case_index, slice_index = (gather_rows(batch[k])[:n] for k in ("case_index", "slice_index"))
        for j in range(n):
            per_case[int(case_index[j])].append((int(slice_index[j]), logits[j], target[j]))
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
    return {
        "per_case": {case: s["paper_dice"] for case, s in scores.items()},
        "mean": float(np.mean([s["paper_dice"] for s in scores.values()])) if scores else float("nan"),
        "tumour_slice_dice": float(np.mean(tumour)) if tumour else float("nan"),
    }
