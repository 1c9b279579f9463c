"""The original paper code's choices, each an option that is off by default, pinned against PyTorch doing what that
code did: the stretch resize is `F.interpolate` to the square, the loss grid is nearest ×4 logits against the
bilinearly resized mask, the broadcast prompt is segment_anything's decoder called with one prompt for a batch of
slices, the first decoder residual is SAM's block with that residual hooked in, and the two loading defects leave the
relative-position tables at zero and the decoder MLPs at PyTorch's default initialisation."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch_reference import assert_close, flax_twin, to_numpy

from sam_jax.adaptation import AdaptationConfig, adapt
from sam_jax.config import sam_config
from sam_jax.model.frame import click_scale, input_grid_target, original_code_prompts, to_model_frame, valid_shape
from sam_jax.spec import RunSpec

CONFIG = sam_config("tiny")


def _canvas(rng, h, w, s, c=2):
    """An h×w slice top-left in an s×s canvas, noise beyond it (which the frame must ignore)."""
    canvas = rng.normal(size=(1, s, s, c)).astype(np.float32)
    return canvas, np.ascontiguousarray(canvas[0, :h, :w])


def test_stretch_is_bilinear_interpolate_to_the_square():
    rng = np.random.default_rng(0)
    canvas, image = _canvas(rng, 13, 20, 24)
    ours, scale = to_model_frame(jnp.asarray(canvas), jnp.array([[13, 20]]), 64, "stretch")
    expected = (
        F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None], size=(64, 64), mode="bilinear", align_corners=False
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    np.testing.assert_allclose(np.asarray(ours[0]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scale[0]), [64 / 20, 64 / 13])  # (x, y): columns by 64/20, rows by 64/13
    assert click_scale((13, 20), 64, "stretch") == (64 / 20, 64 / 13) and valid_shape((13, 20), 64, "stretch") == (
        64,
        64,
    )
    # The test can fail: SAM's rule keeps the aspect and pads.
    kept, _ = to_model_frame(jnp.asarray(canvas), jnp.array([[13, 20]]), 64)
    assert np.abs(np.asarray(kept[0]) - expected).max() > 0.1


def test_input_grid_loss_is_nearest_logits_against_the_bilinear_mask():
    rng = np.random.default_rng(1)
    mask = np.zeros((1, 24, 24), np.float32)
    mask[0, 3:9, 5:14] = 1
    logits = rng.normal(size=(1, 1, 16, 16)).astype(np.float32)
    target = input_grid_target(jnp.asarray(mask), jnp.array([[13, 20]]), 64, "stretch")
    expected_target = F.interpolate(
        torch.from_numpy(mask[:, None, :13, :20]), size=(64, 64), mode="bilinear", align_corners=False
    )[:, 0]
    np.testing.assert_allclose(np.asarray(target), expected_target.numpy(), atol=1e-5)
    upsampled = jnp.asarray(logits).repeat(4, axis=-2).repeat(4, axis=-1)  # the step's own expression
    np.testing.assert_array_equal(
        np.asarray(upsampled), F.interpolate(torch.from_numpy(logits), scale_factor=4, mode="nearest").numpy()
    )


@pytest.mark.slow
def test_broadcast_prompt_is_sams_decoder_given_one_prompt_for_the_batch(tiny_sam_pair):
    ref, ours = tiny_sam_pair
    g, c, n = CONFIG.grid_size, CONFIG.prompt_embed_dim, 3
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(n, g, g, c)).astype(np.float32)
    coords = rng.uniform(0, CONFIG.image_size, size=(n, 1, 2)).astype(np.float32)
    labels = np.ones((n, 1), np.int32)
    with torch.no_grad():  # the original's call: embeddings of n slices, one prompt holding all n clicks
        sparse, dense = ref.prompt_encoder(
            (torch.from_numpy(coords.reshape(1, n, 2)), torch.from_numpy(labels.reshape(1, n))), None, None
        )
        expected, _ = ref.mask_decoder(
            torch.from_numpy(emb).permute(0, 3, 1, 2), ref.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
    broadcast = original_code_prompts(jnp.asarray(coords), jnp.asarray(labels), click_order="xy", broadcast=True)
    logits, _ = ours.decode(jnp.asarray(emb), *broadcast)
    assert_close(logits, to_numpy(expected))
    alone, _ = ours.decode(jnp.asarray(emb), jnp.asarray(coords), jnp.asarray(labels))  # the test can fail
    assert np.abs(np.asarray(alone) - to_numpy(expected)).max() > 1e-2
    swapped, _ = original_code_prompts(coords, labels, click_order="row_col", broadcast=False)
    np.testing.assert_array_equal(swapped, coords[..., ::-1])


@pytest.mark.slow
def test_first_decoder_residual_is_sams_block_with_that_residual(tiny_sam_pair):
    ref, _ = tiny_sam_pair
    ours = adapt(
        flax_twin(CONFIG, ref),
        AdaptationConfig(modalities="t1n_t2w_t2f", lora_rank=0, decoder_first_residual=True),
        rngs=nnx.Rngs(0),
    )
    g, c = CONFIG.grid_size, CONFIG.prompt_embed_dim
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(1, g, g, c)).astype(np.float32)
    coords = rng.uniform(0, CONFIG.image_size, size=(1, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0]], np.int32)
    hook = ref.mask_decoder.transformer.layers[0].self_attn.register_forward_hook(
        lambda module, args, kwargs, out: out + kwargs["q"], with_kwargs=True
    )
    try:
        with torch.no_grad():
            sparse, dense = ref.prompt_encoder((torch.from_numpy(coords), torch.from_numpy(labels)), None, None)
            expected, _ = ref.mask_decoder(
                torch.from_numpy(emb).permute(0, 3, 1, 2), ref.prompt_encoder.get_dense_pe(), sparse, dense, False
            )
    finally:
        hook.remove()
    logits, _ = ours.decode(jnp.asarray(emb), jnp.asarray(coords), jnp.asarray(labels))
    assert_close(logits, to_numpy(expected))


def test_loading_defects_leave_zero_tables_and_random_decoder_mlps(tiny_sam_pair):
    ref, _ = tiny_sam_pair
    sam = flax_twin(CONFIG, ref)
    loaded = {i: np.asarray(layer.mlp.lin1.kernel[...]) for i, layer in enumerate(sam.mask_decoder.transformer.layers)}
    assert any(np.abs(block.attn.rel_pos_h[...]).max() > 0 for block in sam.image_encoder.blocks)
    adapt(
        sam,
        AdaptationConfig(modalities="t1n_t2w_t2f", lora_rank=0, zero_rel_pos=True, random_decoder_mlps=True),
        rngs=nnx.Rngs(0),
    )
    for block in sam.image_encoder.blocks:
        assert not np.asarray(block.attn.rel_pos_h[...]).any() and not np.asarray(block.attn.rel_pos_w[...]).any()
    for i, layer in enumerate(sam.mask_decoder.transformer.layers):
        for linear in (layer.mlp.lin1, layer.mlp.lin2):
            bound = linear.kernel.shape[0] ** -0.5  # nn.Linear's default: U(±1/√fan_in), weight and bias
            for values in (np.asarray(linear.kernel[...]), np.asarray(linear.bias[...])):
                assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
        assert not np.allclose(layer.mlp.lin1.kernel[...], loaded[i])


def test_options_are_off_by_default_and_travel_in_the_spec():
    spec = RunSpec()
    assert (
        spec.resize,
        spec.click_order,
        spec.broadcast_clicks,
        spec.zero_rel_pos,
        spec.random_decoder_mlps,
        spec.decoder_first_residual,
    ) == ("longest_side", "xy", False, False, False, False)
    original = spec.replace(
        resize="stretch",
        click_order="row_col",
        broadcast_clicks=True,
        zero_rel_pos=True,
        random_decoder_mlps=True,
        decoder_first_residual=True,
    )
    assert RunSpec.from_metadata(original.to_metadata()) == original
    assert AdaptationConfig.from_metadata(original.to_metadata()) == original.adaptation()
    with pytest.raises(ValueError, match="click_order 'yx'"):
        spec.replace(click_order="yx")
