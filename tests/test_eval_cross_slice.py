"""A cross-slice model is evaluated as it was trained: each slice as the centre of its own stack of Z slices (zeros
beyond the volume). Pinned against a per-stack loop through the training's forward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_params import randomise

from sam_jax.adaptation import build_model
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.trained import TrainedModel
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import forward

Z = 3


@pytest.fixture(scope="module")
def trained():
    cfg = TrainConfig(model_type="tiny", image_size=64, cross_slice=True, slices=Z, lora_rank=2)
    model = build_model(cfg.sam_config(), cfg, rngs=nnx.Rngs(0))
    randomise(model, nnx.LoRAParam, seed=1)
    for block in model.image_encoder.blocks:  # at zero the branch would change nothing and the test prove nothing
        block.cross_slice.gate[...] = jnp.full(block.cross_slice.gate.shape, 0.5)
    return TrainedModel(model, cfg.spec(), name="cross_slice", training=cfg.to_dict())


def _stack_loop_logits(trained, slices, clicks):
    """Per slice k: the training batch of one stack k-1, k, k+1 (zeros beyond the volume), centre slice's logits."""
    n, h, w, c = slices.shape
    s = max(h, w)
    graphdef, state = nnx.split(trained.model)
    cfg = TrainConfig(**trained.training)
    run = jax.jit(lambda st, b: forward(nnx.merge(graphdef, st), b, jax.random.key(0), cfg)[0])
    out = []
    for k in range(n):
        image = np.zeros((1, Z, s, s, c), np.float32)
        for t in range(Z):
            if 0 <= k - Z // 2 + t < n:
                image[0, t, :h, :w] = slices[k - Z // 2 + t]
        batch = {
            "image": image,
            "mask": np.zeros(image.shape[:-1], np.uint8),
            "valid_hw": np.array([[h, w]]),
            "point_coords": np.repeat(clicks[k][None, None], Z, axis=1),
            "point_labels": np.ones((1, Z, 1), np.int32),
        }
        out.append(np.asarray(run(state, batch))[Z // 2, 0])
    return np.stack(out)


@pytest.mark.slow
def test_each_slice_is_encoded_in_its_own_stack(trained):
    rng = np.random.default_rng(0)
    slices = rng.normal(size=(5, 20, 17, 4)).astype(np.float32)
    clicks = rng.uniform(0, 16, size=(5, 1, 2)).astype(np.float32)
    expected = _stack_loop_logits(trained, slices, clicks)

    segmenter = SliceSegmenter(trained, batch_size=4)  # 1 stack per call: batches are padded and cut
    ours = segmenter.decode(segmenter.encode(slices), clicks, np.ones((5, 1), np.int32), (20, 17))
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # Choosing slices keeps their neighbours: the embeddings of slices 0 and 3 are those of the whole volume's.
    np.testing.assert_allclose(
        np.asarray(segmenter.encode(slices, [0, 3])), np.asarray(segmenter.encode(slices))[[0, 3]], atol=1e-5
    )

    # The test can fail: one slice at a time (the old evaluation) gives other logits.
    flat = dataclasses.replace(trained, spec=trained.spec.replace(slices=1))
    alone = SliceSegmenter(flat, batch_size=4)
    single = alone.decode(alone.encode(slices), clicks, np.ones((5, 1), np.int32), (20, 17))
    assert np.abs(single - expected).max() > 1e-2
