"""LoRA: SAM's paths unchanged, an exact no-op at step 0, the unfolded formula, and folding for inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import ALL_TARGETS, randomise
from small_tiny_vit import TINY_VIT

from sam_jax.adaptation import AdaptationConfig, adapt, build_model, fold
from sam_jax.adaptation.lora import LoRALinear, low_rank_update
from sam_jax.config import sam_config
from sam_jax.model import Sam
from sam_jax.weights.io import model_arrays, save_arrays
from sam_jax.weights.params import model_shapes

CONFIG = sam_config("tiny")


@nnx.jit(static_argnums=(4,))
def _forward(model, images, coords, labels, slices):
    return model.decode(model.encode_image(images, slices), coords, labels, multimask_output=True)


def _prompts(batch, image_size=CONFIG.image_size):
    rng = np.random.default_rng(0)
    coords = jnp.asarray(rng.uniform(0, image_size, (batch, 2, 2)), jnp.float32)
    return coords, jnp.asarray([[1, 0]] * batch, jnp.int32)


def test_sam_paths_unchanged_and_lora_leaves_added(tmp_path):
    sam = Sam(CONFIG, rngs=nnx.Rngs(0))
    save_arrays(tmp_path / "sam.safetensors", {k: np.asarray(v) for k, v in model_arrays(sam).items()}, {})
    model = build_model(CONFIG, AdaptationConfig(), sam_weights=tmp_path / "sam.safetensors", rngs=nnx.Rngs(9))
    sam_arrays, ours = model_arrays(sam), model_arrays(model)
    for path, value in sam_arrays.items():
        if path != "image_encoder.patch_embed.proj.kernel":  # the one weight the 4 modalities replace
            np.testing.assert_array_equal(ours[path], value, err_msg=path)
    added = {p: tuple(ours[p].shape) for p in set(ours) - set(sam_arrays)}
    c, r, hidden = CONFIG.encoder_embed_dim, 4, 4 * CONFIG.encoder_embed_dim
    expected = {}
    for i in range(CONFIG.encoder_depth):
        block = f"image_encoder.blocks.{i}"
        expected.update(
            {
                f"{block}.attn.qkv.lora_q_a": (c, r),
                f"{block}.attn.qkv.lora_q_b": (r, c),
                f"{block}.attn.qkv.lora_v_a": (c, r),
                f"{block}.attn.qkv.lora_v_b": (r, c),
                f"{block}.mlp.lin1.lora_a": (c, r),
                f"{block}.mlp.lin1.lora_b": (r, hidden),
                f"{block}.mlp.lin2.lora_a": (hidden, r),
                f"{block}.mlp.lin2.lora_b": (r, c),
            }
        )
    assert added == expected


@pytest.mark.slow
def test_adapted_model_equals_sam_exactly_at_step_zero():
    sam = Sam(CONFIG, rngs=nnx.Rngs(0))
    adapted = adapt(
        nnx.clone(sam),
        AdaptationConfig(modalities="t1n_t2w_t2f", lora_targets=ALL_TARGETS, cross_slice=True),
        rngs=nnx.Rngs(1),
    )
    images = jax.random.normal(jax.random.key(2), (4, CONFIG.image_size, CONFIG.image_size, 3))
    coords, labels = _prompts(4)
    ref = _forward(sam, images, coords, labels, 1)
    ours = _forward(adapted, images, coords, labels, 2)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_lora_linear_computes_the_low_rank_update_on_its_sections():
    base = nnx.Linear(6, 9, rngs=nnx.Rngs(0))
    layer = LoRALinear(base, sections=("q", "k", "v"), targets=("q", "v"), rank=2, scale=0.5, rngs=nnx.Rngs(1))
    randomise(layer, nnx.LoRAParam, seed=3, scale=1.0)
    x = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
    w, b = np.asarray(base.kernel[...]), np.asarray(base.bias[...])
    expected = x @ w + b
    expected[:, 0:3] += 0.5 * x @ np.asarray(layer.lora_q_a[...]) @ np.asarray(layer.lora_q_b[...])
    expected[:, 6:9] += 0.5 * x @ np.asarray(layer.lora_v_a[...]) @ np.asarray(layer.lora_v_b[...])
    np.testing.assert_allclose(layer(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
    assert not hasattr(layer, "lora_k_a")


def test_low_rank_update_gradients_match_autodiff():
    """The update's hand-written backward against autodiff of s·(x·A)·B, with several token axes."""
    rng = np.random.default_rng(5)
    x, a, b, cotangent = (
        jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((2, 3, 4, 6), (6, 2), (2, 5), (2, 3, 4, 5))
    )
    ours = jax.grad(lambda *args: (low_rank_update(*args, 0.5) * cotangent).sum(), argnums=(0, 1, 2))(x, a, b)
    expected = jax.grad(lambda x, a, b: (0.5 * ((x @ a) @ b) * cotangent).sum(), argnums=(0, 1, 2))(x, a, b)
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lora_a_is_kaiming_uniform_and_b_zero():
    model = build_model(CONFIG, AdaptationConfig(), rngs=nnx.Rngs(0))
    a = np.stack([np.asarray(block.mlp.lin2.lora_a[...]) for block in model.image_encoder.blocks])
    bound = 1 / np.sqrt(a.shape[1])  # U(±1/√in_features)
    assert np.abs(a).max() <= bound and abs(a.std() - bound / np.sqrt(3)) < 0.05 * bound
    b = [v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)) if p[-1].endswith("_b")]
    assert len(b) == 4 * CONFIG.encoder_depth and not any(np.any(x) for x in b)


@pytest.mark.slow
@pytest.mark.parametrize("config", [CONFIG, TINY_VIT], ids=["vit", "tiny_vit"])
def test_fold_gives_plain_encoder_layers_with_the_same_outputs(config):
    model = build_model(config, AdaptationConfig(lora_targets=ALL_TARGETS), rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(2), (2, config.image_size, config.image_size, 4))
    coords, labels = _prompts(2, config.image_size)
    base_out = _forward(model, images, coords, labels, 1)
    randomise(model, nnx.LoRAParam, seed=1)
    folded = fold(nnx.clone(model))
    assert not nnx.state(folded, nnx.LoRAParam)
    assert {k: v.shape for k, v in model_arrays(folded).items()} == model_shapes(config.replace(in_chans=4))
    unfolded_out, folded_out = _forward(model, images, coords, labels, 1), _forward(folded, images, coords, labels, 1)
    assert float(jnp.abs(unfolded_out[0] - base_out[0]).max()) > 1e-2  # the random B matter
    for ours, ref in zip(folded_out, unfolded_out):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * float(jnp.abs(ref).max()))
