"""Cross-slice attention: slices interact only through the gated depth branch, which attends across slices at each
token position of the full grid (never across windows), checked against a loop-by-position NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import ALL_TARGETS, randomise

from sam_jax.adaptation import AdaptationConfig, AdaptationError, adapt, build_model
from sam_jax.adaptation.cross_slice import depth_attention
from sam_jax.config import sam_config
from sam_jax.model import Sam
from sam_jax.model.image_encoder import window_partition, window_unpartition

CONFIG = sam_config("tiny")  # grid 8, window 3: windowed blocks pad 8 → 9
SLICES = 3


def _set_gates(model, value):
    for block in model.image_encoder.blocks:
        block.cross_slice.gate[...] = value


@pytest.fixture(scope="module")
def model():
    """LoRA on every target with random B (so the branch's use of LoRA is checked) and random non-zero gates."""
    model = build_model(CONFIG, AdaptationConfig(lora_targets=ALL_TARGETS, cross_slice=True), rngs=nnx.Rngs(0))
    randomise(model, nnx.LoRAParam, seed=1)
    for i, block in enumerate(model.image_encoder.blocks):
        block.cross_slice.gate[...] = jax.random.uniform(
            jax.random.key(10 + i), (CONFIG.encoder_embed_dim,), minval=0.5
        )
    return model


@nnx.jit(static_argnums=(2,))
def _encode(model, images, slices):
    return model.encode_image(images, slices)


@pytest.mark.slow
def test_slices_interact_only_through_the_gated_branch(model):
    images = jax.random.normal(jax.random.key(2), (2 * SLICES, CONFIG.image_size, CONFIG.image_size, 4))
    perturbed = images.at[1].add(jax.random.normal(jax.random.key(3), images.shape[1:]))  # sample 0, slice 1
    others = np.array([0, 2, 3, 4, 5])
    off = nnx.clone(model)
    for block in off.image_encoder.blocks:
        block.cross_slice = None
    zero_gate = nnx.clone(model)
    _set_gates(zero_gate, 0.0)
    for without_branch in (off, zero_gate):
        before, after = _encode(without_branch, images, SLICES), _encode(without_branch, perturbed, SLICES)
        np.testing.assert_array_equal(after[others], before[others])
        assert float(jnp.abs(after[1] - before[1]).max()) > 1e-3
    before, after = _encode(model, images, SLICES), _encode(model, perturbed, SLICES)
    np.testing.assert_array_equal(after[3:], before[3:])  # the other sample
    for j in (0, 2):  # the perturbed slice's neighbours in its own sample
        assert float(jnp.abs(after[j] - before[j]).max()) > 1e-3


@pytest.mark.slow
def test_branch_off_or_zero_gate_is_plain_sam():
    sam = Sam(CONFIG, rngs=nnx.Rngs(0))
    adapted = adapt(
        nnx.clone(sam), AdaptationConfig(modalities="t1n_t2w_t2f", lora_rank=0, cross_slice=True), rngs=nnx.Rngs(1)
    )
    x = jax.random.normal(jax.random.key(4), (2 * SLICES, CONFIG.grid_size, CONFIG.grid_size, CONFIG.encoder_embed_dim))
    for ours, plain in zip(adapted.image_encoder.blocks, sam.image_encoder.blocks):
        np.testing.assert_array_equal(ours(x, SLICES), plain(x))


def _effective_kernel(layer, sections):
    """W + s·A·B per section, from the layer's leaves (NumPy)."""
    kernel = np.array(layer.kernel[...], np.float64)
    width = kernel.shape[1] // len(sections)
    for i, section in enumerate(sections):
        a, b = (f"lora_{section}_a", f"lora_{section}_b") if section else ("lora_a", "lora_b")
        kernel[:, i * width : (i + 1) * width] += layer.scale * (
            np.asarray(getattr(layer, a)[...], np.float64) @ np.asarray(getattr(layer, b)[...], np.float64)
        )
    return kernel


def _depth_reference(attn, normed, slices):
    """Attention across the slices of each sample, position by position, in plain NumPy."""
    n, h, w, c = normed.shape
    heads, d = attn.num_heads, c // attn.num_heads
    w_qkv, b_qkv = _effective_kernel(attn.qkv, ("q", "k", "v")), np.asarray(attn.qkv.bias[...], np.float64)
    w_proj, b_proj = _effective_kernel(attn.proj, ("",)), np.asarray(attn.proj.bias[...], np.float64)
    out = np.zeros((n, h, w, c))
    for sample in range(n // slices):
        rows = slice(sample * slices, (sample + 1) * slices)
        for i in range(h):
            for j in range(w):
                tokens = normed[rows, i, j].astype(np.float64)  # (Z, C): this position in every slice
                q, k, v = np.split(tokens @ w_qkv + b_qkv, 3, axis=-1)
                mixed = np.zeros((slices, c))
                for head in range(heads):
                    cols = slice(head * d, (head + 1) * d)
                    logits = q[:, cols] @ k[:, cols].T / np.sqrt(d)
                    weights = np.exp(logits - logits.max(-1, keepdims=True))
                    mixed[:, cols] = (weights / weights.sum(-1, keepdims=True)) @ v[:, cols]
                out[rows, i, j] = mixed @ w_proj + b_proj
    return out


def test_windowed_block_attends_across_slices_at_each_position(model):
    block = model.image_encoder.blocks[0]
    assert block.window_size == 3 and CONFIG.grid_size % 3  # windowed, with padding
    x = jax.random.normal(jax.random.key(5), (2 * SLICES, CONFIG.grid_size, CONFIG.grid_size, CONFIG.encoder_embed_dim))
    normed = block.norm1(x)
    depth = _depth_reference(block.attn, np.asarray(normed), SLICES)
    # SAM's own order for the spatial part: zero-pad x, cut windows, then qkv, attention and proj per window.
    windows = window_partition(normed, block.window_size)
    spatial = window_unpartition(
        block.attn.proj(block.attn.mix(block.attn.qkv(windows))), block.window_size, normed.shape[1:3]
    )
    expected = x + spatial + block.cross_slice.gate[...] * jnp.asarray(depth, jnp.float32)
    expected = expected + block.mlp(block.norm2(expected))
    got = block(x, SLICES)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(jnp.abs(expected).max()))


def test_one_slice_attends_to_itself_alone(model):
    """With Z = 1 the softmax is over one key, so the branch is proj(v): not zero once the gate moves."""
    attn = model.image_encoder.blocks[1].attn
    x = jax.random.normal(jax.random.key(6), (2, CONFIG.grid_size, CONFIG.grid_size, CONFIG.encoder_embed_dim))
    v = jnp.split(attn.qkv(x), 3, axis=-1)[2]
    np.testing.assert_allclose(depth_attention(attn, attn.qkv(x), 1), attn.proj(v), rtol=1e-5, atol=1e-5)


def test_batch_must_hold_whole_samples(model):
    x = jnp.zeros((5, CONFIG.grid_size, CONFIG.grid_size, CONFIG.encoder_embed_dim))
    with pytest.raises(AdaptationError, match="5 slices .* samples of 3"):
        model.image_encoder.blocks[0](x, 3)
