"""Validation of a run with broadcast clicks scores as the original code's validation did: each slice of a volume
decoded with one prompt of the clicks of all its slices, the volume being one batch."""

import types

import jax
import numpy as np
import pytest
from flax import nnx

from sam_jax.data.cache import Cache, preprocessing_dir
from sam_jax.data.domains import whole_tumour
from sam_jax.data.pipeline import make_dataset
from sam_jax.evaluation import load_trained
from sam_jax.evaluation.paper_protocol import case_rng, paper_clicks
from sam_jax.training import loop
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import make_eval_forward
from sam_jax.training.validate import broadcast_predictions, paper_dice


@pytest.fixture(scope="module")
def broadcast_run(tiny_trained_run, phantom_cache_dir):
    """The tiny trained model as a paper-code run (broadcast clicks, (row, col) clicks, stretch resize), its cache,
    its held-out cases and their validation predictions."""
    cfg = TrainConfig.load(tiny_trained_run).replace(broadcast_clicks=True, click_order="row_col", resize="stretch")
    cache = Cache.open(preprocessing_dir(phantom_cache_dir))
    model, val_ids = load_trained(tiny_trained_run).model, cache.split()["val"]
    return cfg, model, cache, val_ids, broadcast_predictions(model, cfg, cache, val_ids)


def _volume_as_one_batch(cfg, model, cache, case_id):
    """The original's validation, by the training's own forward: the whole volume is one batch of slices (so the
    batch's broadcast pools the volume's clicks), each slice clicked as the evaluation's paper protocol clicks it.
    Returns (low-res logits, soft targets) and the same with broadcast off."""
    n = cache.num_slices(case_id)
    (batch,) = make_dataset(
        cache, [case_id], click_policy="paper", modalities=cfg.modalities, batch_size=n, shuffle=False, num_epochs=1
    )
    coords, labels = paper_clicks(whole_tumour(np.asarray(cache.labels(case_id))), case_rng(cfg.seed, case_id))
    batch = {**batch, "point_coords": coords[:, None].astype(np.float32), "point_labels": labels[:, None]}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = []
    for broadcast in (True, False):
        forward = make_eval_forward(graphdef, cfg.replace(broadcast_clicks=broadcast))
        logits, _, target = forward(params, rest, batch, jax.random.PRNGKey(0))
        out.append((np.asarray(logits[:, 0]), np.asarray(target)))
    return out


def test_broadcast_validation_is_the_volume_decoded_as_one_batch(broadcast_run):
    cfg, model, cache, val_ids, ours = broadcast_run
    assert val_ids
    broadcast, alone = {}, {}
    for case_id in val_ids:
        broadcast[case_id], alone[case_id] = _volume_as_one_batch(cfg, model, cache, case_id)
        np.testing.assert_allclose(ours[case_id][1], broadcast[case_id][1], atol=1e-6)
        np.testing.assert_allclose(ours[case_id][0], broadcast[case_id][0], atol=2e-4, rtol=1e-4)
        # Not the slices' own clicks: every slice's logits move when it also sees the others'.
        assert np.abs(broadcast[case_id][0] - alone[case_id][0]).max(axis=(1, 2)).min() > 1e-2
    score = paper_dice(ours)["mean"]
    assert score == pytest.approx(paper_dice(broadcast)["mean"], abs=1e-6)
    assert abs(score - paper_dice(alone)["mean"]) > 1e-3


def test_a_budget_stops_inside_a_volume_whose_slices_keep_all_its_clicks(broadcast_run):
    cfg, model, cache, val_ids, ours = broadcast_run
    whole = ours[val_ids[0]]
    others = [c for c in cache.case_ids if c != val_ids[0]]
    (part,) = broadcast_predictions(model, cfg, cache, [val_ids[0], *others], max_slices=5).values()
    assert len(part[0]) == 5
    np.testing.assert_allclose(part[0], whole[0][:5], atol=1e-5)
    np.testing.assert_array_equal(part[1], whole[1][:5])


def test_the_run_validates_by_broadcast_only_with_broadcast_clicks(broadcast_run, monkeypatch):
    """`Run.predictions` (validation and the final scores) takes the broadcast path exactly when the run broadcasts
    clicks (and prompts with clicks alone)."""
    cfg, model, cache, val_ids, _ = broadcast_run
    graphdef, trainable, frozen = nnx.split(model, nnx.Param, ...)
    calls = []
    monkeypatch.setattr(loop, "broadcast_predictions", lambda *a: calls.append(("broadcast", a)) or {})
    monkeypatch.setattr(loop, "low_res_predictions", lambda *a, **k: calls.append(("plain", a)) or {})
    for change, path in (
        ({}, "broadcast"),
        ({"broadcast_clicks": False}, "plain"),
        ({"prompt": "box"}, "plain"),
    ):
        run = types.SimpleNamespace(cfg=cfg.replace(**change), graphdef=graphdef, frozen=frozen, cache=cache)
        run.eval_forward = run.put = run.shard = None
        loop.Run.predictions(run, trainable, val_ids, 7)
        assert calls[-1][0] == path
    merged, args = calls[0][1][0], calls[0][1][1:]
    assert args == (cfg, cache, val_ids, 7)
    assert nnx.graphdef(merged) == nnx.graphdef(model)
