"""SAM's mask decoder: a two-way transformer between prompt tokens and image tokens, then upscaling and
hypernetwork heads that turn mask tokens into mask logits, plus an IoU head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from sam_jax.config import SamConfig
from sam_jax.model.attention import attend, merge_heads, split_heads
from sam_jax.model.layers import MLP, Gelu, MLPBlock, TilingConvTranspose, apply_sequential, layer_norm_2d, sequential

FEW = 8  # one side of an attention this many times shorter than the other is "few" (7 tokens against g² ≥ 256)

# A key projection's bias adds one term to all the logits of a query, which softmax removes: no output of SAM depends
# on it. The tokens→image attentions here do not compute it, so these parameters (trainable with the decoder, kept in
# every checkpoint) get a gradient of exactly zero, where PyTorch's is rounding noise.
KEY_BIASES_WITHOUT_EFFECT = ("cross_attn_token_to_image.k_proj.bias", "final_attn_token_to_image.k_proj.bias")


class DecoderAttention(nnx.Module):
    """Attention with separate q/k/v projections that may shrink the width by `downsample_rate`."""

    def __init__(self, config: SamConfig, downsample_rate: int = 1, *, rngs: nnx.Rngs):
        dim, self.num_heads = config.prompt_embed_dim, config.decoder_num_heads
        inner = dim // downsample_rate
        self.attention_kernel, self.remat_attention = config.attention, config.remat_attention  # static: see Attention
        self.q_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.k_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.v_proj = nnx.Linear(dim, inner, rngs=rngs)
        self.out_proj = nnx.Linear(inner, dim, rngs=rngs)

    def __call__(self, q, k, v):
        """q (B, Nq, C) attends to k, v (B, Nk, C). Between a few prompt tokens and the g² image tokens the
        projections of the image side dominate (2 of 4096×256×128 per attention at g = 64), so they are moved onto
        the few tokens' side: the same sums in another order (2.3× fewer FLOPs), fp32 rounding apart."""
        if self.attention_kernel != "cudnn" and k.shape[1] >= FEW * q.shape[1]:
            return self._few_queries(q, k, v)
        if self.attention_kernel != "cudnn" and q.shape[1] >= FEW * k.shape[1]:
            return self._few_keys(q, k, v)
        q, k, v = (split_heads(p(t), self.num_heads) for p, t in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        return self.out_proj(merge_heads(attend(q, k, v, kernel=self.attention_kernel, remat=self.remat_attention)))

    def _per_head(self, linear: nnx.Linear):
        """A projection's kernel (C, H, D) and bias (H, D), head by head as `split_heads` splits its output."""
        kernel, bias = linear.kernel[...], linear.bias[...]
        return kernel.reshape(kernel.shape[0], self.num_heads, -1), bias.reshape(self.num_heads, -1)

    def _few_queries(self, q, k, v):
        """Tokens → image: each query head is taken back through the key projection, to meet the raw keys
        (q·(kW + b) = (qWᵀ)·k + q·b, whose last term is the same for every key: softmax drops it), and the
        softmax weights meet the raw values before the value projection (their rows sum to 1, so the bias passes)."""
        (wk, _), (wv, bv) = self._per_head(self.k_proj), self._per_head(self.v_proj)
        q, k, v, wk, wv, bv = promote_dtype((split_heads(self.q_proj(q), self.num_heads), k, v, wk, wv, bv))
        query_keys = jnp.einsum("bhqd,chd->bhqc", q * q.shape[-1] ** -0.5, wk)
        # (B, Nk, H, Nq): the image tokens leading, as XLA's CPU matrix products run these shapes fastest.
        weights = jax.nn.softmax(jnp.einsum("bkc,bhqc->bkhq", k, query_keys), axis=1)
        out = jnp.einsum("bhqc,chd->bhqd", jnp.einsum("bkhq,bkc->bhqc", weights, v), wv) + bv[:, None]
        return self.out_proj(merge_heads(out))

    def _few_keys(self, q, k, v):
        """Image → tokens: the query projection is folded into the few keys ((qW + b)·k = q·(Wk) + b·k) and the
        output projection into the few values, so the image side meets only (C × H·Nk) matrices."""
        k, v = (split_heads(p(t), self.num_heads) for p, t in ((self.k_proj, k), (self.v_proj, v)))
        (wq, bq), wo, bo = self._per_head(self.q_proj), self.out_proj.kernel[...], self.out_proj.bias[...]
        q, k, v, wq, bq, wo, bo = promote_dtype((q, k, v, wq, bq, wo, bo))
        k = k * k.shape[-1] ** -0.5
        # (B, Nq, H, Nk): the image tokens leading, as XLA's CPU matrix products run these shapes fastest.
        logits = jnp.einsum("bqc,bchk->bqhk", q, jnp.einsum("chd,bhkd->bchk", wq, k))
        logits = logits + jnp.einsum("hd,bhkd->bhk", bq, k)[:, None]
        values_out = jnp.einsum("bhkd,hdc->bhkc", v, wo.reshape(self.num_heads, -1, wo.shape[-1]))
        return jnp.einsum("bqhk,bhkc->bqc", jax.nn.softmax(logits, axis=-1), values_out) + bo


def _norm(dim, rngs):
    return nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)  # the decoder keeps PyTorch's default eps


class TwoWayAttentionBlock(nnx.Module):
    """Token self-attention, token→image cross-attention, MLP on tokens, image→token cross-attention."""

    def __init__(self, config: SamConfig, skip_first_layer_pe: bool, *, rngs: nnx.Rngs):
        dim = config.prompt_embed_dim
        self.skip_first_layer_pe = skip_first_layer_pe
        self.first_layer_residual = False  # the original paper code's defect, set by `sam_jax.adaptation.original`
        self.self_attn = DecoderAttention(config, rngs=rngs)
        self.norm1 = _norm(dim, rngs)
        self.cross_attn_token_to_image = DecoderAttention(config, 2, rngs=rngs)
        self.norm2 = _norm(dim, rngs)
        self.mlp = MLPBlock(dim, config.decoder_mlp_dim, jax.nn.relu, rngs=rngs)
        self.norm3 = _norm(dim, rngs)
        self.norm4 = _norm(dim, rngs)
        self.cross_attn_image_to_token = DecoderAttention(config, 2, rngs=rngs)

    def __call__(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:  # the first layer replaces the tokens: no positional term, no residual
            attended = self.self_attn(queries, queries, queries)
            queries = queries + attended if self.first_layer_residual else attended
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim = config.prompt_embed_dim
        self.layers = nnx.List([TwoWayAttentionBlock(config, i == 0, rngs=rngs) for i in range(config.decoder_depth)])
        self.final_attn_token_to_image = DecoderAttention(config, 2, rngs=rngs)
        self.norm_final_attn = _norm(dim, rngs)

    def __call__(self, image_embedding, image_pe, point_embedding):
        """image_embedding and image_pe (B, h, w, C), point_embedding (B, T, C) → tokens (B, T, C), image (B, hw, C)."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = image_pe.reshape(image_pe.shape[0], h * w, c)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder(nnx.Module):
    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim = config.prompt_embed_dim
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(config, rngs=rngs)
        self.iou_token = nnx.Embed(1, dim, rngs=rngs)
        self.mask_tokens = nnx.Embed(self.num_mask_tokens, dim, rngs=rngs)
        self.output_upscaling = sequential(
            TilingConvTranspose(dim, dim // 4, 2, rngs=rngs),
            layer_norm_2d(dim // 4, rngs=rngs),
            Gelu(),
            TilingConvTranspose(dim // 4, dim // 8, 2, rngs=rngs),
            Gelu(),
        )
        self.output_hypernetworks_mlps = nnx.List(
            [MLP(dim, dim, dim // 8, 3, rngs=rngs) for _ in range(self.num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth, rngs=rngs
        )

    def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        """image_embeddings (B, g, g, C), image_pe (1, g, g, C), sparse (B, N, C), dense (B, g, g, C).

        The batch of prompts and of image embeddings must agree (repeat the embedding for several prompts of one
        image). Returns mask logits (B, M, 4g, 4g) and IoU predictions (B, M), with M = 3 for multimask output
        (tokens 1..3) and 1 otherwise (token 0), as SAM selects them.
        """
        b = sparse.shape[0]
        output_tokens = jnp.concatenate([self.iou_token.embedding[...], self.mask_tokens.embedding[...]], axis=0)
        tokens = jnp.concatenate([jnp.broadcast_to(output_tokens, (b,) + output_tokens.shape), sparse], axis=1)
        src = image_embeddings + dense
        pos = jnp.broadcast_to(image_pe, src.shape)
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        g = image_embeddings.shape[1]
        upscaled = apply_sequential(self.output_upscaling, src.reshape(b, g, g, -1))
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, upscaled)
        iou_pred = self.iou_prediction_head(iou_token_out)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]
