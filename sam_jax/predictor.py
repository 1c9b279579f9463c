"""Point-and-click (or box) segmentation of one image with the model's own pre- and post-processing.

    predictor = SamPredictor(model)
    predictor.set_image(image)                      # (H, W, 3), RGB 0–255
    masks, scores, low_res = predictor.predict(np.array([[x, y]]), np.array([1]))
    masks, scores, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]), multimask_output=False)

The image goes into the model's frame (`sam_jax.model.frame`, as in training and evaluation: longest side to the
input size, aspect kept, padded bottom/right; prompts scaled by the same factor) as the model's weights expect it
(`SamConfig.pretrained_input`): for SAM normalised with its RGB statistics first; for LiteMedSAM (a 0–255 image, as
its challenge's files hold) min–max scaled to [0, 1] after resizing, by the frame. The decoder's low-resolution
logits come back to the image's size by SAM's postprocess and are thresholded at 0. Differs from segment_anything's
predictor in the resize (antialiased bilinear in JAX at the exact scale instead of PIL's to a rounded size).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax.config import SamConfig
from sam_jax.model import Sam
from sam_jax.model.frame import postprocess_masks, resized_shape, to_model_frame
from sam_jax.model.sam import normalize_rgb


def preprocess(image, config: SamConfig):
    """(H, W, 3) 0–255 image → (size, size, 3) input of a model of `config`, and the scale from image to model
    pixels."""
    frame, scale = _to_frame(np.asarray(image, np.float32), config.image_size, config.frame_min_max)
    return frame, float(scale)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _to_frame(image, size: int, min_max: bool):
    """One compiled program per image shape: the image (normalised unless the frame min–max scales it) top-left in
    a zero square canvas, then into the model's frame."""
    h, w, c = image.shape
    canvas = jnp.zeros((max(h, w), max(h, w), c), jnp.float32)
    canvas = canvas.at[:h, :w].set(image if min_max else normalize_rgb(image))
    frame, scale = to_model_frame(canvas[None], jnp.array([[h, w]], jnp.int32), size, min_max=min_max)
    return frame[0], scale[0, 0]


class SamPredictor:
    """Encode an image once, then decode any number of prompts against it."""

    def __init__(self, model: Sam):
        self.model = model
        self.size = model.config.image_size
        self._encode = nnx.jit(lambda m, x: m.encode_image(x[None])[0])
        self._decode = nnx.jit(_decode, static_argnames=("multimask_output",))
        self.embedding = None

    def set_image(self, image):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != self.model.config.in_chans:
            raise ValueError(f"expected an image of shape (H, W, {self.model.config.in_chans}), got {image.shape}")
        self.original_hw = image.shape[:2]
        self.input_hw = resized_shape(*self.original_hw, self.size)
        x, self.scale = preprocess(image, self.model.config)
        self.embedding = self._encode(self.model, x)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        """Prompts in original-image pixels, (x, y) order → masks (M, H, W) bool, IoU scores (M,), logits (M, 4g, 4g).

        With `multimask_output` SAM's three masks come back (take the highest score for a single best mask);
        otherwise its single-mask output.
        """
        if self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        # NumPy straight into the jitted decoder: jnp.asarray would compile a copy program per prompt shape.
        scale = np.float32(self.scale)
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = np.asarray(point_coords, np.float32).reshape(1, -1, 2) * scale
            labels = np.asarray(point_labels, np.int32).reshape(1, -1)
            if labels.shape[1] != coords.shape[1]:
                raise ValueError(f"{coords.shape[1]} points but {labels.shape[1]} labels")
        if box is not None:
            boxes = np.asarray(box, np.float32).reshape(1, 4) * scale
        if mask_input is not None:
            masks = np.asarray(mask_input, np.float32).reshape(1, *np.shape(mask_input)[-2:], 1)
        low_res, iou = self._decode(
            self.model, self.embedding, coords, labels, boxes, masks, multimask_output=multimask_output
        )
        logits = postprocess_masks(low_res[0], self.input_hw, self.original_hw, self.size)
        return np.asarray(logits > 0), np.asarray(iou[0]), np.asarray(low_res[0])


def _decode(model, embedding, coords, labels, boxes, masks, multimask_output):
    return model.decode(embedding[None], coords, labels, boxes, masks, multimask_output=multimask_output)
