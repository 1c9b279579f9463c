"""The paper's analyses: LoRA discrepancy (singular values and spectral distances from small factors, checked
against full SVDs), domain separation of embeddings (leave-one-case-out k-NN, hand-worked and brute-forced, with its
case-bootstrap interval), and the figures."""

from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from small_tiny_vit import TINY_VIT

from sam_jax.adaptation import AdaptationConfig, build_model, partition, save_adapter
from sam_jax.evaluation import EvaluationError
from sam_jax.evaluation.embeddings import case_bootstrap_interval, knn_accuracy, knn_correct, separation, tsne
from sam_jax.evaluation.figures import heatmap, overlay, scatter_by_domain
from sam_jax.evaluation.lora_discrepancy import (
    as_heatmap,
    check_files,
    difference_norm,
    discrepancy,
    lora_factors,
    pairwise,
    update_singular_values,
)
from sam_jax.weights.io import read_arrays, save_arrays


def _factors(rng, n_in=48, n_out=40, rank=3):
    return rng.normal(size=(n_in, rank)), rng.normal(size=(rank, n_out))


def test_singular_values_and_distance_match_full_svd():
    rng = np.random.default_rng(0)
    first, second = _factors(rng), _factors(rng)
    full_1, full_2 = first[0] @ first[1], second[0] @ second[1]
    np.testing.assert_allclose(update_singular_values(*first), np.linalg.svd(full_1, compute_uv=False)[:3])
    exact = np.linalg.norm(full_1 - full_2, 2)
    assert difference_norm(first, second) == pytest.approx(exact)
    bound = np.max(np.abs(update_singular_values(*first) - update_singular_values(*second)))
    full_bound = np.abs(np.linalg.svd(full_1, compute_uv=False) - np.linalg.svd(full_2, compute_uv=False)).max()
    assert bound == pytest.approx(full_bound) and bound <= exact + 1e-9  # Weyl


def _adapter(path, rng, blocks=2, rank=2, alpha=1.0):
    arrays = {}
    for b in range(blocks):
        for section in ("q", "v"):
            arrays[f"image_encoder.blocks.{b}.attn.qkv.lora_{section}_a"] = rng.normal(size=(16, rank))
            arrays[f"image_encoder.blocks.{b}.attn.qkv.lora_{section}_b"] = rng.normal(size=(rank, 16))
        arrays[f"image_encoder.blocks.{b}.mlp.lin1.lora_a"] = rng.normal(size=(16, rank))
        arrays[f"image_encoder.blocks.{b}.mlp.lin1.lora_b"] = rng.normal(size=(rank, 64))
    arrays["mask_decoder.iou_token.embedding"] = rng.normal(size=(1, 8))
    save_arrays(
        path,
        {k: v.astype(np.float32) for k, v in arrays.items()},
        {"kind": "sam_jax_adapter", "lora_rank": str(rank), "lora_alpha": repr(alpha)},
    )
    return arrays


def _update(raw, block, target, scale):
    """s·A·B of one layer from an adapter's arrays as stored (float32)."""
    layer = f"attn.qkv.lora_{target}_" if target in ("q", "v") else f"mlp.{target}.lora_"
    a, b = (raw[f"image_encoder.blocks.{block}.{layer}{f}"].astype(np.float32).astype(np.float64) for f in "ab")
    return scale * a @ b


def test_adapter_files_give_per_block_and_target_discrepancies(tmp_path):
    rng = np.random.default_rng(1)
    raw = _adapter(tmp_path / "a.safetensors", rng, alpha=4.0)  # scale alpha / rank = 2
    raw_b = _adapter(tmp_path / "b.safetensors", rng)  # scale 1 / 2
    a, b = lora_factors(tmp_path / "a.safetensors"), lora_factors(tmp_path / "b.safetensors")
    assert sorted(a) == [(0, "lin1"), (0, "q"), (0, "v"), (1, "lin1"), (1, "q"), (1, "v")]
    delta = 2 * raw["image_encoder.blocks.1.mlp.lin1.lora_a"] @ raw["image_encoder.blocks.1.mlp.lin1.lora_b"]
    np.testing.assert_allclose(a[(1, "lin1")][0] @ a[(1, "lin1")][1], delta, rtol=1e-5)
    rows = discrepancy(a, b)
    expected = {}  # (block, target) → (Weyl bound, spectral distance), from full SVDs of the two updates
    for r in rows:
        first, second = _update(raw, r["block"], r["target"], 2.0), _update(raw_b, r["block"], r["target"], 0.5)
        sv = [np.linalg.svd(d, compute_uv=False) for d in (first, second)]
        expected[r["block"], r["target"]] = (np.abs(sv[0] - sv[1]).max(), np.linalg.norm(first - second, 2))
    assert {(r["block"], r["target"]): (r["weyl_bound"], r["spectral_distance"]) for r in rows} == {
        k: (pytest.approx(w, rel=1e-6), pytest.approx(d, rel=1e-6)) for k, (w, d) in expected.items()
    }
    grid, blocks, targets = as_heatmap(rows, "weyl_bound")
    assert grid.shape == (2, 3) and targets == ["q", "v", "lin1"] and blocks == [0, 1]
    assert discrepancy(a, a)[0]["spectral_distance"] == pytest.approx(0, abs=1e-9)
    matrix = pairwise([a, b, a])
    mean_bound = np.mean([w for w, _ in expected.values()])
    assert matrix[0, 2] == pytest.approx(0, abs=1e-9) and matrix[0, 1] == pytest.approx(mean_bound, rel=1e-6)
    assert matrix[0, 1] == pytest.approx(matrix[1, 2]) and matrix[1, 0] == matrix[0, 1]


@pytest.mark.slow
def test_real_adapter_names_are_recognised(tiny_trained_run):
    factors = lora_factors(Path(tiny_trained_run) / "adapter.safetensors")
    assert set(factors) == {(b, t) for b in (0, 1) for t in ("q", "v", "lin1", "lin2")}  # tiny: 2 blocks


def test_bad_adapter_inputs_are_refused(tmp_path):
    with pytest.raises(EvaluationError, match="at least two"):
        check_files([tmp_path / "a"])
    with pytest.raises(EvaluationError, match="no such adapter files"):
        check_files([tmp_path / "a", tmp_path / "b"])
    save_arrays(tmp_path / "plain.safetensors", {"x": np.zeros(2, np.float32)}, {"lora_rank": "0"})
    with pytest.raises(EvaluationError, match="plain.safetensors"):
        lora_factors(tmp_path / "plain.safetensors")


def test_knn_accuracy_hand_worked():
    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    # k = 1, each point its own group (plain leave-one-out): 0→1 (a, right), 1→0 (a, right), 3→1 (a, wrong),
    # 6→3 (b, right).
    assert knn_accuracy(points, np.array(["a", "a", "b", "b"]), np.arange(4), k=1) == pytest.approx(3 / 4)


def _four_tight_cases():
    """Two domains, two cases each, three slices per case packed within 0.02 of the case's centre; centres A1 0,
    A2 5, B1 20, B2 100 (1-D, padded to 3-D with zeros)."""
    centres = {"A1": 0.0, "A2": 5.0, "B1": 20.0, "B2": 100.0}
    cases = np.repeat(list(centres), 3)
    points = np.zeros((12, 3))
    points[:, 0] = np.repeat(list(centres.values()), 3) + np.tile([0.0, 0.01, 0.02], 4)
    return points, np.array([c[0] for c in cases]), cases


def test_knn_leaves_out_the_whole_case():
    points, labels, cases = _four_tight_cases()
    # Plain leave-one-out, k = 3: each slice's two case-mates are its two nearest → 2 of 3 votes right, all right.
    assert knn_accuracy(points, labels, np.arange(12), k=3) == 1.0
    # Leave-one-case-out, k = 3: all three votes come from the nearest other case's three slices.
    # A1 → A2 (5 away, right); A2 → A1 (5, right); B1 → A2 (15, wrong); B2 → B1 (80, right): 9 of 12.
    correct = knn_correct(points, labels, cases, k=3)
    np.testing.assert_array_equal(correct, np.repeat([True, True, False, True], 3))
    # Bootstrap over cases within each domain: domain A always gives 6 of 6; domain B draws two of {B1 0/3, B2 3/3}:
    # 0.5 (p 1/4), 0.75 (p 1/2), 1.0 (p 1/4), so the 2.5th and 97.5th percentiles are exactly 0.5 and 1.0.
    assert case_bootstrap_interval(correct, cases, labels) == (0.5, 1.0)
    scores = separation(points, labels, cases, k=3)
    assert scores["knn_accuracy"] == 0.75 and scores["knn_ci95"] == [0.5, 1.0]
    assert scores["knn_k"] == 3 and scores["cases"] == 4 and scores["slices"] == 12 and scores["chance"] == 0.5
    # k larger than the slices outside the biggest case: capped at 12 − 3 = 9.
    assert separation(points, labels, cases, k=50)["knn_k"] == 9
    with pytest.raises(EvaluationError, match="two cases"):
        knn_correct(points[:3], np.array(["A", "A", "B"]), cases[:3])
    with pytest.raises(EvaluationError, match="several domains"):
        case_bootstrap_interval(correct, cases, np.array(["A"] * 4 + ["B"] * 8))


def _silhouette(points, labels):
    """The silhouette by its definition, for two labels: mean over points of (b − a) / max(a, b), a the mean distance
    to the other points of the point's label, b the mean distance to the points of the other label."""
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    same = labels[:, None] == labels[None]
    a = (d * same).sum(1) / (same.sum(1) - 1)
    b = (d * ~same).sum(1) / (~same).sum(1)
    return np.mean((b - a) / np.maximum(a, b))


def _knn_accuracy(points, labels, groups, k=5):
    """Leave-one-group-out k-NN by brute force: majority label of the k nearest points of other groups, ties to the
    nearest of the tied labels."""
    n = len(points)
    correct = 0
    for i in range(n):
        others = [j for j in range(n) if groups[j] != groups[i]]
        distance = [sum((points[i, d] - points[j, d]) ** 2 for d in range(points.shape[1])) for j in others]
        votes = [labels[others[j]] for j in np.argsort(distance)[:k]]
        counts = {v: votes.count(v) for v in votes}
        correct += next(v for v in votes if counts[v] == max(counts.values())) == labels[i]
    return correct / n


def test_knn_matches_brute_force_on_random_cases():
    """Three domains, four cases each, 5–7 slices per case scattered around a case centre: leave-one-case-out and
    plain leave-one-out against the loops above, k = 4 (ties between labels happen)."""
    rng = np.random.default_rng(3)
    points, labels, cases = [], [], []
    for domain, shift in (("GLI", 0.0), ("MEN", 1.0), ("PED", 2.0)):
        for c in range(4):
            size = int(rng.integers(5, 8))
            points.append(rng.normal(shift, 1.5, 6) + rng.normal(0, 0.4, (size, 6)))
            labels += [domain] * size
            cases += [f"{domain}-{c}"] * size
    points, labels, cases = np.concatenate(points), np.array(labels), np.array(cases)
    by_case = knn_accuracy(points, labels, cases, k=4)
    assert by_case == _knn_accuracy(points, labels, cases, k=4)
    by_slice = knn_accuracy(points, labels, np.arange(len(points)), k=4)
    assert by_slice == _knn_accuracy(points, labels, np.arange(len(points)), k=4)
    assert by_case < by_slice  # a slice's case-mates are its nearest neighbours
    low, high = separation(points, labels, cases, k=4)["knn_ci95"]
    assert 0 <= low <= by_case <= high <= 1 and low < high


def test_separated_domains_score_high_and_mixed_ones_near_chance():
    rng = np.random.default_rng(0)
    apart = np.concatenate([rng.normal(0, 1, (30, 8)), rng.normal(20, 1, (30, 8))])
    labels = np.array(["GLI"] * 30 + ["MEN"] * 30)
    cases = np.repeat(np.arange(6), 10)  # three cases of ten slices per domain
    scores = separation(apart, labels, cases)
    assert scores["knn_accuracy"] == 1.0 and scores["knn_ci95"] == [1.0, 1.0] and scores["chance"] == 0.5
    assert scores["silhouette"] == pytest.approx(_silhouette(apart, labels), rel=1e-6)
    mixed_points = rng.normal(0, 1, (60, 8))
    mixed = separation(mixed_points, labels, cases)
    assert mixed["knn_accuracy"] == _knn_accuracy(mixed_points, labels, cases)
    assert mixed["silhouette"] == pytest.approx(_silhouette(mixed_points, labels), rel=1e-6)
    with pytest.raises(EvaluationError, match="two domains"):
        separation(apart[:30], labels[:30], cases[:30])
    assert tsne(apart, seed=0).shape == (60, 2)


def test_figures_are_written(tmp_path):
    shape = (20, 16, 8)
    images = {m: np.random.default_rng(0).random(shape) for m in ("t1n", "t1c", "t2w", "t2f")}
    truth, prediction = np.zeros(shape, bool), np.zeros(shape, bool)
    truth[5:9, 5:9, 2:6] = True
    truth[5:12, 5:12, 4] = True  # most tumour on slice 4
    prediction[6:10, 5:9, 3:5] = True
    assert overlay(images, truth, prediction, tmp_path / "o.png") == 4
    heatmap(np.arange(6.0).reshape(3, 2), [0, 1, 2], ["q", "v"], tmp_path / "h.png", "t")
    scatter_by_domain(np.random.default_rng(0).random((6, 2)), ["GLI"] * 3 + ["MEN"] * 3, tmp_path / "s.png", "t")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("o.png", "h.png", "s.png"))


def test_tiny_vit_adapter_factors_are_numbered_through_its_stages(tmp_path):
    """LiteMedSAM's layout: attention blocks in stages 1–3 (`layers.<s>.blocks.<i>`), MLP layers named fc1/fc2."""
    spec = AdaptationConfig(modalities="t2f_x3", lora_targets=("q", "v", "lin1", "lin2"), lora_alpha=2.0)
    _, trainable, _ = partition(build_model(TINY_VIT, spec, rngs=nnx.Rngs(0)), "lora")
    save_adapter(tmp_path / "adapter.safetensors", trainable, spec, "ab" * 32)
    raw, _ = read_arrays(tmp_path / "adapter.safetensors")
    blocks = sorted({n.split(".attn.")[0] for n in raw if ".attn.qkv.lora_q_a" in n})
    assert blocks == ["image_encoder.layers.1.blocks.0", *(f"image_encoder.layers.2.blocks.{i}" for i in (0, 1))] + [
        "image_encoder.layers.3.blocks.0"
    ]
    factors = lora_factors(tmp_path / "adapter.safetensors")
    assert set(factors) == {(b, t) for b in range(4) for t in ("q", "v", "lin1", "lin2")}
    a, b = raw["image_encoder.layers.2.blocks.1.mlp.fc2.lora_a"], raw["image_encoder.layers.2.blocks.1.mlp.fc2.lora_b"]
    np.testing.assert_array_equal(factors[(2, "lin2")][1], b)
    np.testing.assert_allclose(factors[(2, "lin2")][0], spec.lora_scale * a)
