"""PNG figures: modality overlays with ground-truth and predicted contours (Figure 7), several models' masks side by
side on one case (Figure 7 across models), the LoRA discrepancy heatmap (Figure 8) and the embedding map by domain
(Figure 9). Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from sam_jax.data.domains import MODALITIES  # noqa: E402

_TITLES = {"t1n": "T1", "t1c": "T1Gd", "t2w": "T2", "t2f": "FLAIR"}


def overlay(images: dict, truth: np.ndarray | None, prediction: np.ndarray, path, title: str = "") -> int:
    """Four modalities at the axial slice with most tumour (truth, else prediction), contours: truth green,
    prediction red. Volumes are (X, Y, Z); shown with Y down the rows. Returns the slice shown."""
    reference = truth if truth is not None and truth.any() else prediction
    z = int(np.argmax(reference.sum(axis=(0, 1)))) if reference.any() else reference.shape[2] // 2
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, m in zip(axes, MODALITIES):
        ax.imshow(images[m][:, :, z].T, cmap="gray", origin="lower")
        for mask, colour in ((truth, "lime"), (prediction, "red")):
            if mask is not None and mask[:, :, z].any():
                ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors=colour, linewidths=1)
        ax.set_title(_TITLES[m])
        ax.axis("off")
    fig.suptitle(f"{title} slice z={z}  (green: ground truth, red: prediction)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return z


def comparison(
    images: dict,
    truth: np.ndarray | None,
    predictions: dict,
    scores: dict,
    path,
    title: str = "",
    background: str = "t2f",
) -> int:
    """Top row: the four modalities at the axial slice with most tumour (truth, else all predictions together),
    ground truth contoured in green. Bottom row: one panel per model, its mask filled red over `background` with the
    truth contour, titled with its score. Volumes are (X, Y, Z). Returns the slice shown."""
    reference = truth if truth is not None and truth.any() else sum(p.astype(np.int32) for p in predictions.values())
    z = int(np.argmax(reference.sum(axis=(0, 1)))) if reference.any() else reference.shape[2] // 2
    columns = max(len(MODALITIES), len(predictions))
    fig, axes = plt.subplots(2, columns, figsize=(3 * columns, 6.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def truth_contour(ax):
        if truth is not None and truth[:, :, z].any():
            ax.contour(truth[:, :, z].T.astype(float), levels=[0.5], colors="lime", linewidths=1)

    for ax, m in zip(axes[0], MODALITIES):
        ax.imshow(images[m][:, :, z].T, cmap="gray", origin="lower")
        truth_contour(ax)
        ax.set_title(_TITLES[m])
    for ax, (name, mask) in zip(axes[1], predictions.items()):
        ax.imshow(images[background][:, :, z].T, cmap="gray", origin="lower")
        shown = mask[:, :, z].T.astype(float)
        ax.imshow(np.ma.masked_where(shown == 0, shown), cmap=ListedColormap(["red"]), alpha=0.45, origin="lower")
        truth_contour(ax)
        score = scores.get(name)
        ax.set_title(name if score is None else f"{name}: {score:.3f}", fontsize=9)
    fig.suptitle(f"{title} slice z={z}  (green: ground truth, red: each model's mask on {_TITLES[background]})")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return z


def heatmap(values: np.ndarray, rows, columns, path, title: str, row_label: str = "block") -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 0.35 * len(rows) + 1.5))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def scatter_by_domain(points: np.ndarray, domains, path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    domains = np.asarray(domains)
    for d in sorted(set(domains.tolist())):
        ax.scatter(*points[domains == d].T, s=8, label=d)
    ax.legend()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
