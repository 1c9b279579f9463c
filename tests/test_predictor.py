"""The predictor: SAM's pre/post-processing around the model, on a non-square image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_reference import assert_close, to_numpy

from sam_jax.config import PIXEL_MEAN, PIXEL_STD, sam_config
from sam_jax.predictor import SamPredictor, postprocess_masks, preprocess, resized_shape

CONFIG = sam_config("tiny")


def test_resized_shape_rounds_half_up():
    assert resized_shape(240, 155, 1024) == (1024, 661)  # 155·1024/240 = 661.33
    assert resized_shape(3, 2, 5) == (5, 3)  # 2·5/3 = 3.33
    assert resized_shape(4, 2, 5) == (5, 3)  # 2.5 rounds up, as SAM's int(x + 0.5)


@pytest.mark.parametrize(
    "input_hw, original_hw", [((128, 83), (200, 130)), ((128, 101), (100, 79))], ids=["enlarging", "shrinking"]
)
def test_postprocess_matches_sam(tiny_sam_pair, input_hw, original_hw):
    """Shrinking too (a slice smaller than the model's input, as BraTS's 240 in SAM's 1024): no antialiasing."""
    ref, _ = tiny_sam_pair
    low_res = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = to_numpy(ref.postprocess_masks(torch.from_numpy(low_res), input_hw, original_hw))
    assert_close(postprocess_masks(jnp.asarray(low_res), input_hw, original_hw, CONFIG.image_size), expected)


@pytest.mark.slow
def test_predict_scales_clicks_and_returns_masks_at_image_size(tiny_sam_pair):
    _, model = tiny_sam_pair
    image = np.random.default_rng(1).uniform(0, 255, size=(200, 130, 3)).astype(np.float32)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(np.array([[65.0, 50.0]]), np.array([1]), multimask_output=True)
    assert masks.shape == (3, 200, 130) and masks.dtype == bool and scores.shape == (3,)

    # The same prediction by hand: the image normalised, scaled by 128/200 (aspect kept) into the padded frame, the
    # click scaled by the same factor on both axes (x, y order).
    scale = 128 / 200
    x, frame_scale = preprocess(image, CONFIG)
    assert frame_scale == pytest.approx(scale)
    canvas = np.zeros((200, 200, 3), np.float32)  # zero (the mean colour) right of the image, as SAM pads
    canvas[:, :130] = (image - np.array(PIXEL_MEAN)) / np.array(PIXEL_STD)
    resized = jax.image.scale_and_translate(
        jnp.asarray(canvas), (128, 128, 3), (0, 1), jnp.array([scale, scale]), jnp.zeros(2), "linear", antialias=True
    )
    np.testing.assert_allclose(x, resized, atol=1e-4)
    assert not np.asarray(x)[:, 84:].any()  # 130·0.64 = 83.2 columns hold the image, the rest is padding
    embedding = nnx.jit(lambda m, x: m.encode_image(x))(model, x[None])  # jitted: eagerly, hundreds of programs
    expected_low, expected_iou = nnx.jit(lambda m, *a: m.decode(*a, multimask_output=True))(
        model, embedding, jnp.array([[[65.0 * scale, 50.0 * scale]]]), jnp.array([[1]])
    )
    np.testing.assert_allclose(low_res, expected_low[0], atol=1e-5)
    np.testing.assert_allclose(scores, expected_iou[0], atol=1e-5)
    logits = postprocess_masks(expected_low[0], resized_shape(200, 130, 128), (200, 130), CONFIG.image_size)
    assert (masks == (np.asarray(logits) > 0)).mean() > 0.999


def test_predict_needs_an_image_first(tiny_sam_pair):
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(tiny_sam_pair[1]).predict(np.zeros((1, 2)), np.ones(1))
    with pytest.raises(ValueError, match="expected an image of shape"):
        SamPredictor(tiny_sam_pair[1]).set_image(np.zeros((10, 10)))
