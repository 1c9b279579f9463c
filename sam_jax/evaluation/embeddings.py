"""Figure 9 measured: encoder embeddings mean-pooled per slice, for tumour slices sampled from each domain, mapped by
t-SNE for the picture, and the domains' separation put in numbers on the embeddings themselves: the silhouette
score (−1…1, higher = more separated) and leave-one-out k-NN domain accuracy (chance = 1 / domains)."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from sam_jax.evaluation.errors import EvaluationError


def pooled_embeddings(segmenter, slices: np.ndarray, which) -> np.ndarray:
    """(N, H, W, C) slices of a volume → (len(which), D) spatial means of the encoder's output for slices `which`
    (a cross-slice model sees their neighbours too)."""
    return np.asarray(segmenter.encode(slices, which).mean(axis=(1, 2)))


def sample_tumour_slices(tumour: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` slice indices with tumour, drawn without replacement, sorted."""
    candidates = np.flatnonzero(tumour.any(axis=(1, 2)))
    return np.sort(rng.choice(candidates, size=min(count, candidates.size), replace=False))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (majority of the k nearest other points; ties to the nearest)."""
    k = min(k, len(features) - 1)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    correct = 0
    for i, neighbours in enumerate(index):
        others = [j for j in neighbours if j != i][:k]
        votes = labels[others]
        values, counts = np.unique(votes, return_counts=True)
        best = values[counts == counts.max()]
        winner = next(v for v in votes if v in best)  # nearest among the tied labels
        correct += winner == labels[i]
    return correct / len(features)


def separation(features: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2 or len(features) < 3:
        raise EvaluationError("the embedding map needs slices of at least two domains (and ≥ 3 slices)")
    return {"silhouette": float(silhouette_score(features, labels)), "knn_accuracy": knn_accuracy(features, labels, k),
            "knn_k": min(k, len(features) - 1), "chance": 1 / len(set(labels.tolist())), "slices": len(features)}


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    perplexity = float(min(30.0, max(1.0, (len(features) - 1) / 3)))
    # Beside XLA's threads, t-SNE's OpenMP/BLAS pools spin for ~45 s on 60 points; one thread takes 0.1 s.
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(features)
