"""SAM's prompt encoder: points, boxes and a low-resolution mask become sparse and dense embeddings.

Coordinates are (x, y) pixels in the model's input frame (image_size × image_size), as in SAM.
Point labels: 1 foreground, 0 background, −1 padding (ignored).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sam_jax.config import SamConfig
from sam_jax.model.layers import Buffer, Gelu, apply_sequential, layer_norm_2d, sequential


class PositionEmbeddingRandom(nnx.Module):
    """Random Fourier features of normalised coordinates (Tancik et al.); the Gaussian matrix is SAM's buffer."""

    def __init__(self, num_pos_feats: int, *, rngs: nnx.Rngs):
        self.positional_encoding_gaussian_matrix = Buffer(jax.random.normal(rngs.params(), (2, num_pos_feats)))

    def encode(self, coords):
        """coords in [0, 1], (..., 2) as (x, y) → (..., 2·num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix[...]
        coords = 2 * math.pi * coords
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def grid(self, h: int, w: int):
        """Encoding of every cell centre of an h×w grid → (h, w, C)."""
        ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
        xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
        xy = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)
        return self.encode(xy)

    def points(self, coords, image_size: int):
        """Pixel coordinates (..., 2) in an image_size² frame → (..., C)."""
        return self.encode(coords / image_size)


class PromptEncoder(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim = config.prompt_embed_dim
        self.image_size = config.image_size
        self.grid_size = config.grid_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2, rngs=rngs)
        # 0 negative point, 1 positive point, 2 and 3 the box's top-left and bottom-right corners.
        self.point_embeddings = nnx.List([nnx.Embed(1, dim, rngs=rngs) for _ in range(4)])
        self.not_a_point_embed = nnx.Embed(1, dim, rngs=rngs)
        self.mask_downscaling = sequential(
            nnx.Conv(1, 4, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
            layer_norm_2d(4, rngs=rngs),
            Gelu(),
            nnx.Conv(4, 16, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs),
            layer_norm_2d(16, rngs=rngs),
            Gelu(),
            nnx.Conv(16, dim, (1, 1), rngs=rngs),
        )
        self.no_mask_embed = nnx.Embed(1, dim, rngs=rngs)

    def dense_pe(self):
        """Positional encoding of the image embedding grid, (1, g, g, C)."""
        return self.pe_layer.grid(self.grid_size, self.grid_size)[None]

    def embed_points(self, coords, labels, pad: bool):
        coords = coords + 0.5  # pixel centres
        if pad:  # without a box SAM appends one padding point
            b = coords.shape[0]
            coords = jnp.concatenate([coords, jnp.zeros((b, 1, 2), coords.dtype)], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones((b, 1), labels.dtype)], axis=1)
        emb = self.pe_layer.points(coords, self.image_size)
        labels = labels[..., None]
        emb = jnp.where(labels == -1, self.not_a_point_embed.embedding[0], emb)
        emb = emb + jnp.where(labels == 0, self.point_embeddings[0].embedding[0], 0.0)
        emb = emb + jnp.where(labels == 1, self.point_embeddings[1].embedding[0], 0.0)
        return emb

    def embed_boxes(self, boxes):
        """boxes (B, 4) as x0, y0, x1, y1 → two corner tokens (B, 2, C)."""
        corners = self.pe_layer.points(boxes.reshape(-1, 2, 2) + 0.5, self.image_size)
        return (
            corners.at[:, 0]
            .add(self.point_embeddings[2].embedding[0])
            .at[:, 1]
            .add(self.point_embeddings[3].embedding[0])
        )

    def __call__(self, points=None, boxes=None, masks=None, batch_size: int = 1):
        """points: (coords (B, N, 2), labels (B, N)) or None; boxes (B, 4) or None; masks (B, 4g, 4g, 1) or None.

        Returns sparse (B, N', C) and dense (B, g, g, C) embeddings.
        """
        for given in (points[0] if points is not None else None, boxes, masks):
            if given is not None:
                batch_size = given.shape[0]
        dim = self.no_mask_embed.embedding.shape[-1]
        sparse = [jnp.zeros((batch_size, 0, dim))]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        sparse = jnp.concatenate(sparse, axis=1)
        if masks is not None:
            dense = apply_sequential(self.mask_downscaling, masks)
        else:
            g = self.grid_size
            dense = jnp.broadcast_to(self.no_mask_embed.embedding[0], (batch_size, g, g, dim))
        return sparse, dense
