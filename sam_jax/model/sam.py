"""The whole SAM: image encoder (SAM's ViT or a TinyViT, as the config says), prompt encoder and mask decoder under
the PyTorch state-dict names."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from sam_jax.config import PIXEL_MEAN, PIXEL_STD, SamConfig
from sam_jax.model.image_encoder import ImageEncoderViT
from sam_jax.model.mask_decoder import MaskDecoder
from sam_jax.model.prompt_encoder import PromptEncoder
from sam_jax.model.tiny_vit import TinyViT

IMAGE_ENCODERS = {"vit": ImageEncoderViT, "tiny_vit": TinyViT}  # by `SamConfig.image_encoder`


class Sam(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.image_encoder = IMAGE_ENCODERS[config.image_encoder](config, rngs=rngs)
        self.prompt_encoder = PromptEncoder(config, rngs=rngs)
        self.mask_decoder = MaskDecoder(config, rngs=rngs)

    def encode_image(self, images, slices: int = 1):
        """Normalised, padded images (B, S, S, in_chans) → embeddings (B, g, g, C).

        `slices` (static): B holds B/slices volumes of that many contiguous slices (see `ImageEncoderViT`).
        """
        return self.image_encoder(images, slices)

    def decode(
        self,
        image_embeddings,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_inputs=None,
        multimask_output: bool = False,
    ):
        """Prompts for each embedding of the batch → low-resolution mask logits (B, M, 4g, 4g) and IoU (B, M).

        Point coordinates are (x, y) pixels of the model's input frame; labels 1 positive, 0 negative, −1 padding.
        """
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, batch_size=image_embeddings.shape[0])
        return self.mask_decoder(image_embeddings, self.prompt_encoder.dense_pe(), sparse, dense, multimask_output)

    def __call__(
        self, images, point_coords=None, point_labels=None, boxes=None, mask_inputs=None, multimask_output: bool = False
    ):
        return self.decode(self.encode_image(images), point_coords, point_labels, boxes, mask_inputs, multimask_output)


def normalize_rgb(images):
    """0–255 RGB (…, 3) → SAM's normalised input."""
    return (images - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
