"""Figure 9 measured: encoder embeddings mean-pooled per slice, for tumour slices sampled from each domain, mapped by
t-SNE for the picture, and the domains' separation put in numbers on the embeddings themselves (never on the t-SNE
map), with the case as the unit that has to generalise:

- k-NN domain accuracy, leave-one-case-out (`knn_correct`): each slice is classified by the k nearest slices of
  *other* cases. A case's slices lie close together whatever its domain, so letting a slice vote with its own case
  (plain leave-one-out) measures case identity and inflates the figure. Chance = 1 / domains.
- its 95% interval (`case_bootstrap_interval`): a percentile bootstrap over cases, stratified by domain, fixed seed.
  A case's slices are not independent draws, so a binomial (e.g. Wilson) interval over slices would be too narrow:
  the case is the sampled unit. Resampling cases within each domain keeps the design (a fixed number of cases per
  domain, so the same chance level), and the percentile interval stays inside [0, 1] with no normal approximation,
  which a mean ± z·s/√n over per-case accuracies needs and fails near 0 or 1 with few cases. Limits: the neighbour
  search is not re-run per resample (each case's correct count is taken as given, so the interval reflects which
  cases were drawn, not the variability of the reference set); with a few cases per domain it is coarse and tends
  to under-cover; it collapses to a point when every case scores the same.
- silhouette (`silhouette_score`, Euclidean, −1…1, higher = more separated): per slice (b − a) / max(a, b), a the
  mean distance to the other slices of its domain, b the mean distance to the slices of the nearest other domain,
  averaged over slices. It describes how compact and apart the domains' clouds of sampled slices are. `a` counts
  the slice's own case, so tight cases raise it too; it has no interval and does not say whether an unseen case
  would land in its domain's cloud (the leave-one-case-out k-NN accuracy does)."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from sam_jax.evaluation.errors import EvaluationError

RESAMPLES = 2000  # bootstrap resamples of the k-NN interval


def pooled_embeddings(segmenter, slices: np.ndarray, which) -> np.ndarray:
    """(N, H, W, C) slices of a volume → (len(which), D) spatial means of the encoder's output for slices `which`
    (a cross-slice model sees their neighbours too)."""
    return np.asarray(segmenter.encode(slices, which).mean(axis=(1, 2)))


def sample_tumour_slices(tumour: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` slice indices with tumour, drawn without replacement, sorted."""
    candidates = np.flatnonzero(tumour.any(axis=(1, 2)))
    return np.sort(rng.choice(candidates, size=min(count, candidates.size), replace=False))


def knn_k(groups: np.ndarray, k: int) -> int:
    """The k actually used: at most the number of slices outside the largest group."""
    _, sizes = np.unique(np.asarray(groups), return_counts=True)
    return int(min(k, len(groups) - sizes.max()))


def knn_correct(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 5) -> np.ndarray:
    """Per point, whether its k-NN label is right, its neighbours drawn only from the points of other groups
    (leave-one-group-out; `groups` = case ids, or `np.arange(n)` for plain leave-one-out). The label is the
    majority of the k nearest (Euclidean; equal distances in index order), ties going to the nearest of the tied
    labels."""
    features, labels, groups = np.asarray(features, np.float64), np.asarray(labels), np.asarray(groups)
    k = knn_k(groups, k)
    if k < 1:
        raise EvaluationError("leave-one-case-out k-NN needs slices of at least two cases")
    correct = np.zeros(len(features), bool)
    for i in range(len(features)):
        distance = np.linalg.norm(features - features[i], axis=1)
        distance[groups == groups[i]] = np.inf
        votes = labels[np.argsort(distance, kind="stable")[:k]]
        values, counts = np.unique(votes, return_counts=True)
        best = values[counts == counts.max()]
        correct[i] = next(v for v in votes if v in best) == labels[i]  # nearest among the tied labels
    return correct


def knn_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """Leave-one-group-out k-NN accuracy over points (see `knn_correct`)."""
    return float(knn_correct(features, labels, groups, k).mean())


def case_bootstrap_interval(
    correct: np.ndarray,
    cases: np.ndarray,
    strata: np.ndarray,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the slice-pooled accuracy Σ correct / Σ slices, resampling whole cases with
    replacement within each stratum (domain); each case's (correct, slices) counts are kept as they are. Every case
    must lie in one stratum."""
    correct, cases, strata = np.asarray(correct, bool), np.asarray(cases), np.asarray(strata)
    ids, case_of = np.unique(cases, return_inverse=True)
    hits = np.bincount(case_of, weights=correct.astype(float), minlength=len(ids))
    sizes = np.bincount(case_of, minlength=len(ids)).astype(float)
    stratum = np.empty(len(ids), dtype=strata.dtype)
    for c in range(len(ids)):
        in_case = np.unique(strata[case_of == c])
        if in_case.size != 1:
            raise EvaluationError(f"case {ids[c]} has slices of several domains: {in_case.tolist()}")
        stratum[c] = in_case[0]
    rng = np.random.default_rng(seed)
    total_hits, total_sizes = np.zeros(resamples), np.zeros(resamples)
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        draw = members[rng.integers(0, members.size, size=(resamples, members.size))]
        total_hits += hits[draw].sum(axis=1)
        total_sizes += sizes[draw].sum(axis=1)
    tail = 50 * (1 - level)
    low, high = np.percentile(total_hits / total_sizes, [tail, 100 - tail])
    return float(low), float(high)


def separation(features: np.ndarray, labels: np.ndarray, cases: np.ndarray, k: int = 5, seed: int = 0) -> dict:
    """Silhouette and leave-one-case-out k-NN domain accuracy with its 95% case-bootstrap interval (module doc).
    `labels`: each slice's domain; `cases`: each slice's case id."""
    labels, cases = np.asarray(labels), np.asarray(cases)
    if len(set(labels.tolist())) < 2 or len(features) < 3:
        raise EvaluationError("the embedding map needs slices of at least two domains (and ≥ 3 slices)")
    if len(cases) != len(labels):
        raise EvaluationError(f"{len(cases)} case ids for {len(labels)} slices")
    correct = knn_correct(features, labels, cases, k)
    low, high = case_bootstrap_interval(correct, cases, labels, seed=seed)
    return {
        "silhouette": float(silhouette_score(features, labels)),
        "knn_accuracy": float(correct.mean()),
        "knn_ci95": [low, high],
        "knn_neighbours": "other cases only (leave-one-case-out)",
        "knn_ci_method": f"percentile bootstrap over cases, stratified by domain, {RESAMPLES} resamples, seed {seed}",
        "knn_k": knn_k(cases, k),
        "chance": 1 / len(set(labels.tolist())),
        "slices": len(features),
        "cases": len(set(cases.tolist())),
    }


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    perplexity = float(min(30.0, max(1.0, (len(features) - 1) / 3)))
    # Beside XLA's threads, t-SNE's OpenMP/BLAS pools spin for ~45 s on 60 points; one thread takes 0.1 s.
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(features)
