"""Slices in, native-grid logits out, with the encoder run once per slice and the decoder rerun per prompt.

Each slice (H, W, C) sits top-left in an S×S canvas (S = max(H, W)) and goes into the model's frame and back by
`sam_jax.model.frame`, the rules training uses. Everything is jitted with static shapes: batches are padded (see
`_compiled_size`).

A cross-slice model trained on stacks of Z slices is run as it was trained and validated: each slice is encoded as
the centre of its own stack of Z contiguous slices (zeros beyond the volume), a sliding window that scores every
slice once and costs Z encoder passes per slice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax.data.boxes import boxes_to_model_frame
from sam_jax.evaluation.trained import TrainedModel
from sam_jax.model.frame import click_scale, original_code_prompts, postprocess_masks, to_model_frame, valid_shape


def _padded_batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _compiled_size(n: int, batch_size: int) -> int:
    """Batches of fewer than `batch_size` are padded to a power of two: few compilations, little waste (a
    slice-by-slice propagation decodes batches of one)."""
    return batch_size if n >= batch_size else min(batch_size, 1 << (n - 1).bit_length())


def _pad_to(array, size: int):
    if len(array) == size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


@functools.lru_cache(maxsize=8)
def _programs(graphdef, size: int, stack: int, resize: str, min_max: bool):
    """The jitted encoder and decoder of one model structure and input rule, shared by every segmenter of it: a
    training run builds one per validation pass, which then compiles nothing anew."""

    @jax.jit
    def encode(state, images, valid_hw):
        model = nnx.merge(graphdef, state)
        frame, _ = to_model_frame(images, valid_hw, size, resize, min_max)
        return model.encode_image(frame, slices=stack)[stack // 2 :: stack]

    @jax.jit
    def decode(state, embeddings, coords, labels, boxes, mask_input):
        model = nnx.merge(graphdef, state)
        logits, _ = model.decode(embeddings, coords, labels, boxes, mask_input)
        return logits[:, 0]

    return encode, decode


class SliceSegmenter:
    def __init__(self, trained: TrainedModel, batch_size: int = 8):
        self.size = trained.image_size
        self.batch_size = batch_size
        self.stack, self.resize = trained.spec.stack, trained.spec.resize
        self.click_order, self.broadcast_clicks = trained.spec.click_order, trained.spec.broadcast_clicks
        graphdef, self.state = nnx.split(trained.model)
        min_max = trained.model.config.frame_min_max
        self._encode, self._decode = _programs(graphdef, self.size, self.stack, self.resize, min_max)

    def scale(self, hw) -> np.ndarray:
        """Slice pixels → model-frame pixels: the (x, y) factors of the run's resize rule."""
        return np.asarray(click_scale(hw, self.size, self.resize), np.float32)

    def encode(self, slices: np.ndarray, which=None):
        """(N, H, W, C) slices of a volume → embeddings (len(which), g, g, D) of the slices `which` (default: all),
        kept on the device. A cross-slice model sees each in its stack of neighbours (see the module docstring)."""
        n, h, w, c = slices.shape
        which = np.arange(n) if which is None else np.asarray(which)
        s, z = max(h, w), self.stack
        per_call = max(1, self.batch_size // z)  # stacks per encoder call: batch_size slices at most
        compiled = _compiled_size(len(which), per_call)
        valid_hw = np.tile(np.array([[h, w]], np.int32), (compiled * z, 1))
        out = []
        for start, stop in _padded_batches(len(which), per_call):
            # A fresh buffer each batch: on CPU, JAX may alias a NumPy input instead of copying it.
            canvas = np.zeros((compiled, z, s, s, c), np.float32)
            for i, centre in enumerate(which[start:stop]):
                first = centre - z // 2
                lo, hi = max(first, 0), min(first + z, n)
                canvas[i, lo - first : hi - first, :h, :w] = slices[lo:hi]
            out.append(self._encode(self.state, canvas.reshape(compiled * z, s, s, c), valid_hw)[: stop - start])
        return jnp.concatenate(out)

    def decode(self, embeddings, coords, labels, hw, mask_input=None, boxes=None):
        """Clicks (N, K, 2) in slice (x, y) pixels with labels (N, K), and/or `boxes` (N, 4) (x0, y0, x1, y1) in
        slice pixels (clicks None: the boxes alone) → low-res logits (N, 4g, 4g). Boxes are always (x, y): the
        original code's row/column click order concerns its clicks only.

        `mask_input`: optional (N, 4g, 4g) logits of a previous round, as SAM's interactive loop feeds them back.
        """
        scale = self.scale(hw)
        if coords is not None:
            coords, labels = original_code_prompts(
                np.asarray(coords, np.float32) * scale,
                np.asarray(labels),
                click_order=self.click_order,
                broadcast=False,
            )
        if boxes is not None:
            boxes = boxes_to_model_frame(np.asarray(boxes, np.float32).reshape(-1, 4), scale)
        n = len(coords if coords is not None else boxes)
        compiled = _compiled_size(n, self.batch_size)
        pad = functools.partial(_pad_to, size=compiled)
        out = []
        for start, stop in _padded_batches(n, self.batch_size):
            rows = [None if a is None else pad(np.asarray(a[start:stop])) for a in (coords, labels, boxes)]
            masks = None if mask_input is None else pad(np.asarray(mask_input[start:stop]))[..., None]
            emb = embeddings[start:stop]
            if stop - start < compiled:
                emb = jnp.concatenate([emb, jnp.repeat(emb[-1:], compiled - (stop - start), axis=0)])
            logits = self._decode(self.state, emb, *rows, masks)
            out.append(np.asarray(logits[: stop - start]))
        return np.concatenate(out)

    def to_slice_grid(self, low_res: np.ndarray, hw) -> np.ndarray:
        """(N, 4g, 4g) low-res logits → (N, H, W) logits at the slice's own size."""
        return np.asarray(postprocess_masks(low_res, valid_shape(hw, self.size, self.resize), tuple(hw), self.size))
