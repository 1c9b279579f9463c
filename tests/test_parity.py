"""Per-layer and end-to-end parity with Meta's PyTorch SAM (random init), fp32, tolerance 1e-4 × output scale."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_reference import assert_close, to_numpy

from sam_jax.config import sam_config
from sam_jax.model.layers import TilingConvTranspose, apply_sequential
from sam_jax.model.mask_decoder import KEY_BIASES_WITHOUT_EFFECT
from sam_jax.model.sam import normalize_rgb
from sam_jax.weights.params import _conv_transpose

CONFIG = sam_config("tiny")


def _image(config, batch=2, seed=0):
    return (
        np.random.default_rng(seed)
        .normal(size=(batch, config.image_size, config.image_size, config.in_chans))
        .astype(np.float32)
    )


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def test_patch_embed(tiny_sam_pair):
    ref, ours = tiny_sam_pair
    x = _image(CONFIG)
    assert_close(ours.image_encoder.patch_embed(jnp.asarray(x)), to_numpy(ref.image_encoder.patch_embed(_nchw(x))))


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_block(tiny_sam_pair, index):
    ref, ours = tiny_sam_pair
    assert (ours.image_encoder.blocks[index].window_size == 0) == (index in CONFIG.encoder_global_attn_indexes)
    g = CONFIG.grid_size  # 8 tokens per side with window 3: padding and 3×3 windows are exercised
    x = np.random.default_rng(1).normal(size=(2, g, g, CONFIG.encoder_embed_dim)).astype(np.float32)
    assert_close(
        ours.image_encoder.blocks[index](jnp.asarray(x)), to_numpy(ref.image_encoder.blocks[index](torch.from_numpy(x)))
    )


def test_neck(tiny_sam_pair):
    ref, ours = tiny_sam_pair
    g = CONFIG.grid_size
    x = np.random.default_rng(2).normal(size=(2, g, g, CONFIG.encoder_embed_dim)).astype(np.float32)
    out = apply_sequential(ours.image_encoder.neck, jnp.asarray(x))
    assert_close(np.moveaxis(np.asarray(out), -1, 1), to_numpy(ref.image_encoder.neck(_nchw(x))))


def test_image_encoder(tiny_sam_pair):
    ref, ours = tiny_sam_pair
    x = _image(CONFIG)
    out = ours.image_encoder(jnp.asarray(x))
    assert_close(np.moveaxis(np.asarray(out), -1, 1), to_numpy(ref.image_encoder(_nchw(x))))


def _prompts(batch=3, n=2, seed=3):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, CONFIG.image_size, size=(batch, n, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, -1], [0, 1]], np.int32)[:batch, :n]
    x0y0 = rng.uniform(0, CONFIG.image_size / 2, size=(batch, 2))
    boxes = np.concatenate([x0y0, x0y0 + rng.uniform(1, CONFIG.image_size / 2, size=(batch, 2))], 1).astype(np.float32)
    masks = rng.normal(size=(batch, CONFIG.mask_input_size, CONFIG.mask_input_size, 1)).astype(np.float32)
    return coords, labels, boxes, masks


@pytest.mark.parametrize("use", ["points", "box", "points+box", "mask", "points+mask"])
def test_prompt_encoder(tiny_sam_pair, use):
    ref, ours = tiny_sam_pair
    coords, labels, boxes, masks = _prompts()
    pts = (coords, labels) if "points" in use else None
    box = boxes if "box" in use else None
    mask = masks if "mask" in use else None
    sparse, dense = ours.prompt_encoder(
        None if pts is None else (jnp.asarray(coords), jnp.asarray(labels)),
        None if box is None else jnp.asarray(box),
        None if mask is None else jnp.asarray(mask),
        batch_size=3,
    )
    with torch.no_grad():
        rs, rd = ref.prompt_encoder(
            None if pts is None else (torch.from_numpy(coords), torch.from_numpy(labels)),
            None if box is None else torch.from_numpy(box),
            None if mask is None else _nchw(mask),
        )
    assert_close(sparse, to_numpy(rs))
    assert_close(np.moveaxis(np.asarray(dense), -1, 1), to_numpy(rd))
    assert_close(
        np.moveaxis(np.asarray(ours.prompt_encoder.dense_pe()), -1, 1), to_numpy(ref.prompt_encoder.get_dense_pe())
    )


def test_tiling_conv_transpose_is_torchs_conv_transpose():
    """The upscaling's transposed convolution as a matrix product equals torch's ConvTranspose2d (kernel 2, stride 2)
    given the converter's kernel, and its gradients equal those of XLA's convolution (Flax's ConvTranspose)."""
    ref = torch.nn.ConvTranspose2d(6, 5, 2, stride=2)
    ours = TilingConvTranspose(6, 5, 2, rngs=nnx.Rngs(0))
    ours.kernel[...] = jnp.asarray(_conv_transpose(to_numpy(ref.weight)))
    ours.bias[...] = jnp.asarray(to_numpy(ref.bias))
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 6)).astype(np.float32)  # not square: rows and columns kept
    assert_close(ours(jnp.asarray(x)), np.moveaxis(to_numpy(ref(_nchw(x))), 1, -1))
    flax = nnx.ConvTranspose(6, 5, (2, 2), strides=(2, 2), padding="VALID", rngs=nnx.Rngs(0))
    flax.kernel[...], flax.bias[...] = ours.kernel[...], ours.bias[...]
    grads = [nnx.grad(lambda m, x: (m(x) ** 3).sum(), argnums=(0, 1))(m, jnp.asarray(x)) for m in (ours, flax)]
    for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder(tiny_sam_pair, multimask):
    ref, ours = tiny_sam_pair
    g, c = CONFIG.grid_size, CONFIG.prompt_embed_dim
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(1, g, g, c)).astype(np.float32)
    coords, labels, _, _ = _prompts()
    with torch.no_grad():
        rs, rd = ref.prompt_encoder((torch.from_numpy(coords), torch.from_numpy(labels)), None, None)
        rm, ri = ref.mask_decoder(_nchw(emb), ref.prompt_encoder.get_dense_pe(), rs, rd, multimask)
    sparse, dense = ours.prompt_encoder((jnp.asarray(coords), jnp.asarray(labels)))
    om, oi = ours.mask_decoder(
        jnp.broadcast_to(jnp.asarray(emb), (3, g, g, c)), ours.prompt_encoder.dense_pe(), sparse, dense, multimask
    )
    assert om.shape == (3, 3 if multimask else 1, 4 * g, 4 * g)
    assert_close(om, to_numpy(rm))
    assert_close(oi, to_numpy(ri))


@pytest.mark.slow
def test_whole_model(tiny_sam_pair):
    """SAM's forward normalises a 0–255 image itself; ours takes it normalised."""
    ref, ours = tiny_sam_pair
    x = np.random.default_rng(5).uniform(0, 255, size=(1, CONFIG.image_size, CONFIG.image_size, 3)).astype(np.float32)
    coords, labels, boxes, _ = _prompts(batch=1)
    with torch.no_grad():
        out = ref(
            [
                {
                    "image": _nchw(x)[0],
                    "original_size": (CONFIG.image_size,) * 2,
                    "point_coords": torch.from_numpy(coords),
                    "point_labels": torch.from_numpy(labels),
                    "boxes": torch.from_numpy(boxes),
                }
            ],
            multimask_output=True,
        )[0]
    masks, iou = ours(
        normalize_rgb(jnp.asarray(x)),
        jnp.asarray(coords),
        jnp.asarray(labels),
        jnp.asarray(boxes),
        multimask_output=True,
    )
    assert_close(masks, to_numpy(out["low_res_logits"]))
    assert_close(iou, to_numpy(out["iou_predictions"]))


@pytest.mark.parametrize(
    "queries, keys", [(7, 4096), (4096, 7), (7, 7)], ids=["tokens_to_image", "image_to_tokens", "tokens"]
)
def test_decoder_attention_in_each_orientation(queries, keys):
    """SAM's decoder attention at its real sizes (C 256, 8 heads, width halved): between 7 prompt tokens and 64²
    image tokens ours moves the image side's projections onto the tokens' side (`DecoderAttention`); PyTorch's
    computes them as written. Biases random, so the terms the rearranged sums drop or pass are tested."""
    from flax import nnx
    from segment_anything.modeling.transformer import Attention

    from sam_jax.model.mask_decoder import DecoderAttention

    torch.manual_seed(0)
    ref = Attention(256, 8, downsample_rate=2)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ours = DecoderAttention(sam_config("vit_b"), 2, rngs=nnx.Rngs(0))
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        layer, linear = getattr(ours, name), getattr(ref, name)
        layer.kernel[...] = jnp.asarray(to_numpy(linear.weight).T)
        layer.bias[...] = jnp.asarray(to_numpy(linear.bias))
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(2, n, 256)).astype(np.float32) for n in (queries, keys, keys))
    with torch.no_grad():
        expected = ref(*(torch.from_numpy(x) for x in (q, k, v)))
    assert_close(ours(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)), to_numpy(expected))


def test_key_biases_without_effect_change_no_output(tiny_sam_pair):
    """The key biases our decoder leaves out (`KEY_BIASES_WITHOUT_EFFECT`) change nothing in PyTorch's SAM either:
    set to large random values there, its masks and IoU stay as they were, to rounding."""
    ref = copy.deepcopy(tiny_sam_pair[0])
    g, c = CONFIG.grid_size, CONFIG.prompt_embed_dim
    emb = _nchw(np.random.default_rng(4).normal(size=(1, g, g, c)).astype(np.float32))
    coords, labels, _, _ = _prompts()

    def decode():
        with torch.no_grad():
            sparse, dense = ref.prompt_encoder((torch.from_numpy(coords), torch.from_numpy(labels)), None, None)
            return ref.mask_decoder(emb, ref.prompt_encoder.get_dense_pe(), sparse, dense, True)

    before = decode()
    changed = [name for name, _ in ref.named_parameters() if name.endswith(KEY_BIASES_WITHOUT_EFFECT)]
    assert len(changed) == CONFIG.decoder_depth + 1  # one per two-way block, and the final attention
    with torch.no_grad():
        for name, value in ref.named_parameters():
            if name in changed:
                value.add_(10 * torch.randn_like(value))
    for new, old in zip(decode(), before):
        assert_close(to_numpy(new), to_numpy(old), rel=1e-5)
