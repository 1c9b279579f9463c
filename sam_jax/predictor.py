"""Point-and-click segmentation of one image with SAM's pre- and post-processing.

    predictor = SamPredictor(model)
    predictor.set_image(image)                      # (H, W, 3), RGB 0–255
    masks, scores, low_res = predictor.predict(np.array([[x, y]]), np.array([1]))

The image is resized so its longest side is the model's input size (rounded half up), normalised with SAM's
statistics and padded bottom/right; the decoder's low-resolution logits are upsampled to the input frame, cropped
to the unpadded part, resized to the original size and thresholded at 0. Differs from segment_anything's predictor
only in the image resize (bilinear with antialiasing in JAX instead of PIL's).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax.model import Sam
from sam_jax.model.sam import normalize_rgb


def resized_shape(height: int, width: int, longest: int):
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image, size: int, normalize=normalize_rgb):
    """(H, W, C) image → (size, size, C) model input, and the resized (unpadded) shape."""
    h, w = image.shape[:2]
    nh, nw = resized_shape(h, w, size)
    resized = jax.image.resize(jnp.asarray(image, jnp.float32), (nh, nw, image.shape[2]), "bilinear")
    x = normalize(resized)
    return jnp.pad(x, ((0, size - nh), (0, size - nw), (0, 0))), (nh, nw)


def postprocess_masks(low_res_logits, input_hw, original_hw, size: int):
    """(..., M, 4g, 4g) logits → (..., M, H, W) logits at the original size (bilinear, as SAM)."""
    lead = low_res_logits.shape[:-2]
    x = jax.image.resize(low_res_logits, lead + (size, size), "bilinear")
    x = x[..., :input_hw[0], :input_hw[1]]
    return jax.image.resize(x, lead + tuple(original_hw), "bilinear")


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
        x, self.input_hw = preprocess(image, self.size)
        self.embedding = self._encode(self.model, x)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        """Prompts in original-image pixels, (x, y) order → masks (M, H, W) bool, IoU scores (M,), logits (M, 4g, 4g).

        With `multimask_output` SAM's three masks come back (take the highest score for a single best mask);
        otherwise its single-mask output.
        """
        if self.embedding is None:
            raise RuntimeError("call set_image() before predict()")
        scale = np.array([self.input_hw[1] / self.original_hw[1], self.input_hw[0] / self.original_hw[0]], np.float32)
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = jnp.asarray(np.asarray(point_coords, np.float32).reshape(1, -1, 2) * scale)
            labels = jnp.asarray(np.asarray(point_labels, np.int32).reshape(1, -1))
            if labels.shape[1] != coords.shape[1]:
                raise ValueError(f"{coords.shape[1]} points but {labels.shape[1]} labels")
        if box is not None:
            boxes = jnp.asarray(np.asarray(box, np.float32).reshape(1, 4) * np.tile(scale, 2))
        if mask_input is not None:
            masks = jnp.asarray(np.asarray(mask_input, np.float32).reshape(1, *np.shape(mask_input)[-2:], 1))
        low_res, iou = self._decode(self.model, self.embedding, coords, labels, boxes, masks,
                                    multimask_output=multimask_output)
        logits = postprocess_masks(low_res[0], self.input_hw, self.original_hw, self.size)
        return np.asarray(logits > 0), np.asarray(iou[0]), np.asarray(low_res[0])


def _decode(model, embedding, coords, labels, boxes, masks, multimask_output):
    return model.decode(embedding[None], coords, labels, boxes, masks, multimask_output=multimask_output)
