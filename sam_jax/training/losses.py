"""Segmentation losses on mask logits against (possibly soft) targets in [0, 1], averaged over the batch."""

from __future__ import annotations

import jax
import optax

LOSSES = ("bce", "dice", "bce_dice", "focal")


def bce(logits, target):
    """Binary cross-entropy with logits, mean over pixels: the paper's loss."""
    return optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(-2, -1))


def soft_dice(logits, target, eps: float = 1.0):
    """1 − soft Dice of sigmoid(logits), per mask; eps keeps empty masks at a finite, small loss."""
    p = jax.nn.sigmoid(logits)
    inter = (p * target).sum(axis=(-2, -1))
    return 1 - (2 * inter + eps) / (p.sum(axis=(-2, -1)) + target.sum(axis=(-2, -1)) + eps)


def focal(logits, target, gamma: float = 2.0, alpha: float = 0.25):
    return optax.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma).mean(axis=(-2, -1))


def mask_loss(name: str, logits, target):
    """Per-mask loss (…,) for logits and target of shape (…, H, W)."""
    if name == "bce":
        return bce(logits, target)
    if name == "dice":
        return soft_dice(logits, target)
    if name == "bce_dice":
        return bce(logits, target) + soft_dice(logits, target)
    if name == "focal":
        return focal(logits, target)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")


def multimask_loss(name: str, logits, target):
    """SAM's rule for ambiguous prompts: of the M candidate masks (…, M, H, W) only the best one is penalised."""
    return mask_loss(name, logits, target[..., None, :, :]).min(axis=-1)
