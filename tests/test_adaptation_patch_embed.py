"""The patch embedding for four modalities: SAM's kept for three channels, PyTorch's init or SAM's RGB mean else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sam_jax.adaptation import AdaptationConfig, AdaptationError, adapt, build_model
from sam_jax.config import sam_config
from sam_jax.model import Sam

CONFIG = sam_config("tiny")


def _sam_with_bias(seed=0):
    sam = Sam(CONFIG, rngs=nnx.Rngs(seed))
    proj = sam.image_encoder.patch_embed.proj
    proj.bias[...] = jax.random.normal(jax.random.key(seed + 1), proj.bias.shape)  # SAM's bias is not zero
    return sam


def test_three_channels_keep_sams_embedding():
    sam = _sam_with_bias()
    kernel = np.asarray(sam.image_encoder.patch_embed.proj.kernel[...])
    adapt(sam, AdaptationConfig(modalities="t1n_t2w_t2f", lora_rank=0), rngs=nnx.Rngs(5))
    np.testing.assert_array_equal(sam.image_encoder.patch_embed.proj.kernel[...], kernel)
    assert sam.config.in_chans == 3


def test_random_init_is_pytorchs_default_and_keeps_sams_bias():
    sam = _sam_with_bias()
    bias = np.asarray(sam.image_encoder.patch_embed.proj.bias[...])
    adapt(sam, AdaptationConfig(lora_rank=0), rngs=nnx.Rngs(5))
    kernel = np.asarray(sam.image_encoder.patch_embed.proj.kernel[...])
    assert kernel.shape == (16, 16, 4, CONFIG.encoder_embed_dim) and sam.config.in_chans == 4
    bound = 1 / np.sqrt(4 * 16 * 16)  # U(±1/√fan_in), fan_in = C_in·16·16
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.02 * bound  # a uniform's standard deviation
    np.testing.assert_array_equal(sam.image_encoder.patch_embed.proj.bias[...], bias)
    image = jnp.zeros((1, CONFIG.image_size, CONFIG.image_size, 4))
    assert sam.image_encoder.patch_embed(image).shape == (1, CONFIG.grid_size, CONFIG.grid_size, 64)


def test_rgb_mean_embeds_equal_channels_as_sam_embeds_the_image_repeated():
    sam = _sam_with_bias()
    adapted = adapt(nnx.clone(sam), AdaptationConfig(patch_embed_init="rgb_mean", lora_rank=0), rngs=nnx.Rngs(5))
    gray = jax.random.normal(jax.random.key(2), (2, CONFIG.image_size, CONFIG.image_size, 1))
    ours = adapted.image_encoder.patch_embed(jnp.repeat(gray, 4, axis=-1))
    sams = sam.image_encoder.patch_embed(jnp.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(ours, sams, rtol=0, atol=1e-5 * float(jnp.abs(sams).max()))


def test_only_a_plain_three_channel_sam_is_adapted():
    with pytest.raises(AdaptationError, match="3-channel config"):
        build_model(CONFIG.replace(in_chans=4), AdaptationConfig(), rngs=nnx.Rngs(0))
    model = adapt(_sam_with_bias(), AdaptationConfig(lora_rank=0), rngs=nnx.Rngs(1))
    with pytest.raises(AdaptationError, match="plain 3-channel SAM"):
        adapt(model, AdaptationConfig(lora_rank=0), rngs=nnx.Rngs(1))
