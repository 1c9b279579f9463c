"""Clicks placed in the model's own errors, on the accelerator (iterative training, Mahadevan et al. 2018).

The next click falls uniformly at random in the larger of the false-negative and false-positive regions of the
previous low-resolution prediction: positive on a miss, negative on a false alarm. (Evaluation uses the RITM rule,
the region's interior-most point, on the host: `sam_jax.data.clicks`.) No error left → a padding click (label −1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def click_in_error(rng, logits, target, input_size: int):
    """logits, target (B, h, w) on the low-res grid → coords (B, 1, 2) in the pixels of the `input_size` model frame
    and labels (B, 1)."""
    b, h, w = logits.shape
    pred = logits > 0
    truth = target > 0.5
    fn, fp = truth & ~pred, pred & ~truth
    use_fn = fn.sum(axis=(1, 2)) >= fp.sum(axis=(1, 2))
    region = jnp.where(use_fn[:, None, None], fn, fp)
    noise = jax.random.gumbel(rng, (b, h, w))
    flat = jnp.argmax(jnp.where(region, noise, -jnp.inf).reshape(b, -1), axis=-1)
    row, col = flat // w, flat % w
    stride = input_size / w  # 4 for SAM (the low-res grid is a quarter of its input), 1 for LiteMedSAM
    coords = jnp.stack([(col + 0.5) * stride, (row + 0.5) * stride], axis=-1).astype(jnp.float32)
    labels = jnp.where(region.any(axis=(1, 2)), use_fn.astype(jnp.int32), -1)
    return coords[:, None, :], labels[:, None]
