"""Scores during and after training: the paper's per-slice Dice protocol on whole volumes, at the decoder's grid.

For each volume every axial slice is decoded from one click (the paper's positive click, a random one on empty
slices; a run trained with boxes gets each tumour slice's tight box instead of it or beside it, and no box
elsewhere), per-slice Dice (empty/empty = 1) is averaged over the slices and over the logit thresholds
{0.1, 0.3, 0.5, 0.7, 0.9}, then over volumes. The evaluation app (`eval/`) scores at the native grid as well.

A run with broadcast clicks (the original code's) is validated as the original validated: each slice decoded with the
clicks of all the slices of its volume (`broadcast_predictions`).
"""

from __future__ import annotations

from collections import defaultdict

import grain
import jax
import numpy as np
from flax import nnx

from sam_jax.data.domains import MODALITIES, whole_tumour
from sam_jax.data.pipeline import make_dataset, select_slices
from sam_jax.evaluation.paper_protocol import case_rng, paper_prompts
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.trained import TrainedModel
from sam_jax.metrics import paper_scores
from sam_jax.model.frame import target_to_low_res


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


def _first_device(x):
    return x.addressable_data(0) if isinstance(x, jax.Array) else x


def broadcast_predictions(model, cfg, cache, case_ids, max_slices: int = 0):
    """`low_res_predictions` for a run with broadcast clicks, as the original code validated: its `validation_sam`
    as published (no `-evl_chunk`; the 4 random slices of its first upload are commented out) takes a whole volume
    as one batch and packs every slice's click into one prompt, so each slice is decoded with the clicks of all the
    slices of its volume. The clicks are the evaluation's paper protocol's for the case (`paper_prompts`), the
    encoder takes the slices a training step takes on one device, and `max_slices` stops in the case that reaches it,
    whose first slices are still decoded with all its clicks.

    `model`: the run's (`cfg`: its `TrainConfig`), run on this process's first device: each process scores every
    case, alike (the clicks depend on the seed and the case alone)."""
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(_first_device, state))
    step_slices = max(1, (cfg.volume_batch or cfg.batch_size) // jax.device_count()) * cfg.slices
    low_res = model.config.mask_input_size
    segmenter = SliceSegmenter(TrainedModel(model, cfg.spec(), "validation"), step_slices)
    channels = [MODALITIES.index(m) for m in cfg.modalities]
    out, left = {}, max_slices or np.inf
    for case_id in case_ids:
        if left <= 0:
            break
        slices = cache.image(case_id)[..., channels] * np.float32(cache.intensity_scale(case_id))
        tumour = whole_tumour(np.asarray(cache.labels(case_id)))
        n, hw = int(min(len(tumour), left)), tumour.shape[1:]
        coords, labels = paper_prompts(tumour, case_rng(cfg.seed, case_id), broadcast=True)
        logits = segmenter.decode(segmenter.encode(slices, np.arange(n)), coords[:n], labels[:n], hw)
        canvas = np.zeros((n, max(hw), max(hw)), np.uint8)  # square, top-left, as the pipeline's
        canvas[:, : hw[0], : hw[1]] = tumour[:n]
        valid_hw = np.tile(np.array([hw], np.int32), (n, 1))
        target = target_to_low_res(canvas, valid_hw, cfg.image_size, cfg.resize, low_res=low_res)
        out[case_id] = (logits, np.asarray(target))
        left -= n
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
