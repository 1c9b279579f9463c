"""Trainable rules: the paper's parameter counts, every parameter ruled, and a train step that moves exactly the
trainable leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from random_params import randomise

from sam_jax.adaptation import PRESETS, AdaptationConfig, build_model, count_parameters, partition
from sam_jax.adaptation.trainable_rules import TrainableRulesError
from sam_jax.config import sam_config
from sam_jax.model.abstract import abstract
from sam_jax.model.mask_decoder import KEY_BIASES_WITHOUT_EFFECT

CONFIG = sam_config("tiny")
SLICES = 2


def _flat(state):
    return {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("cross_slice", [False, True])
def test_vit_b_lora_preset_counts_the_papers_5_36_million(cross_slice):
    structure = abstract(
        lambda rngs: build_model(sam_config("vit_b"), AdaptationConfig(cross_slice=cross_slice), rngs=rngs)
    )
    _, trainable, frozen = partition(structure, "lora")
    lora, patch_embed, mask_decoder = 516_096, 4 * 16 * 16 * 768 + 768, 4_058_340  # docs/reference.md §1, §4
    gates = 12 * 768 if cross_slice else 0
    assert count_parameters(nnx.state(structure, nnx.LoRAParam)) == lora
    assert count_parameters(trainable) == lora + patch_embed + mask_decoder + gates
    # SAM ViT-B has 93,735,472 parameters (3-channel embedding 3·16·16·768 + 768) and a 2×128 buffer.
    sam_without_embedding = 93_735_472 - (3 * 16 * 16 * 768 + 768)
    assert count_parameters(frozen) == sam_without_embedding - mask_decoder + 2 * 128


@pytest.mark.parametrize("modalities", ["t1n_x3", "t1n_t2w_t2f"])
def test_lora_keeps_sams_rgb_patch_embedding_frozen(modalities):
    """The paper's 3-channel baselines (§4.3) train LoRA and the decoder; SAM's own embedding stays as it is."""
    structure = abstract(
        lambda rngs: build_model(sam_config("vit_b"), AdaptationConfig(modalities=modalities), rngs=rngs)
    )
    _, trainable, _ = partition(structure, "lora")
    assert not any(path[:2] == ("image_encoder", "patch_embed") for path, _ in nnx.to_flat_state(trainable))
    assert count_parameters(trainable) == 516_096 + 4_058_340  # LoRA + mask decoder, docs/reference.md §4
    _, trainable, _ = partition(structure, "patch_embed_only")  # asked for by name, it still trains
    assert count_parameters(trainable) == 3 * 16 * 16 * 768 + 768


@pytest.fixture(scope="module")
def model():
    model = build_model(CONFIG, AdaptationConfig(cross_slice=True), rngs=nnx.Rngs(0))
    # Non-zero LoRA B and gates: at zero they would (correctly) block the gradients of LoRA A and of the branch.
    randomise(model, nnx.LoRAParam, seed=1)
    for block in model.image_encoder.blocks:
        block.cross_slice.gate[...] = jnp.full(block.cross_slice.gate.shape, 0.5)
    return model


def test_presets_pick_the_intended_parts(model):
    expected = {
        "lora": lambda p: (
            ".lora_" in p
            or p.startswith(("image_encoder.patch_embed.", "mask_decoder."))
            or p.endswith("cross_slice.gate")
        ),
        "patch_embed_only": lambda p: p.startswith("image_encoder.patch_embed."),
        "lora_frozen_patch": lambda p: ".lora_" in p or p.startswith("mask_decoder.") or p.endswith("cross_slice.gate"),
        "full": lambda p: "gaussian_matrix" not in p,  # the prompt encoder's buffer is not a parameter
        "decoder_only": lambda p: p.startswith("mask_decoder."),
        "none": lambda p: False,
    }
    assert set(expected) == set(PRESETS)
    everything = _flat(nnx.state(model))
    for preset, trains in expected.items():
        _, trainable, frozen = partition(model, preset)
        assert set(_flat(trainable)) == {p for p in everything if trains(p)}, preset
        assert set(_flat(trainable)) | set(_flat(frozen)) == set(everything)


def test_every_parameter_must_match_a_rule(model):
    with pytest.raises(TrainableRulesError, match=r"match no trainable rule: image_encoder\.blocks\.0"):
        partition(model, [(r"mask_decoder\..*", "train"), (r"prompt_encoder\..*", "freeze")])
    with pytest.raises(TrainableRulesError, match="expected \\(regex, 'train' \\| 'freeze'\\)"):
        partition(model, [(r".*", "learn")])
    with pytest.raises(TrainableRulesError, match="unknown trainable preset"):
        partition(model, "adapter")


def _loss(graphdef, trainable, frozen, images, coords, labels):
    model = nnx.merge(graphdef, trainable, frozen)
    embeddings = model.encode_image(images, SLICES)
    total = 0.0
    for multimask in (False, True):  # together they use all four mask tokens and IoU outputs
        masks, iou = model.decode(embeddings, coords, labels, multimask_output=multimask)
        weights = jnp.cos(jnp.arange(masks.size, dtype=jnp.float32)).reshape(masks.shape)
        total = total + jnp.mean(weights * masks) + jnp.mean(iou * jnp.arange(iou.size).reshape(iou.shape))
    return total


@pytest.fixture(scope="module")
def adam_step(model):
    graphdef, trainable, frozen = partition(model, "lora")
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(trainable, opt_state, frozen, batch):
        grads = jax.grad(lambda t: _loss(graphdef, t, frozen, *batch))(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, grads

    rng = np.random.default_rng(0)
    batch = (
        jnp.asarray(rng.normal(size=(2 * SLICES, CONFIG.image_size, CONFIG.image_size, 4)), jnp.float32),
        jnp.asarray(rng.uniform(0, CONFIG.image_size, (2 * SLICES, 1, 2)), jnp.float32),
        jnp.ones((2 * SLICES, 1), jnp.int32),
    )
    before = (_flat(trainable), _flat(frozen))
    new_trainable, _, grads = step(trainable, optimizer.init(trainable), frozen, batch)
    return before, _flat(new_trainable), _flat(frozen), _flat(grads)


@pytest.mark.slow
def test_gradients_are_nonzero_for_every_trainable_leaf(adam_step):
    (trainable, _), _, _, grads = adam_step
    assert set(grads) == set(trainable)
    zero = [p for p, g in grads.items() if not np.any(g) and not p.endswith(KEY_BIASES_WITHOUT_EFFECT)]
    assert not zero, f"zero gradients for {zero}"


def test_adam_step_moves_trainable_leaves_and_no_frozen_one(adam_step):
    (trainable, frozen), new_trainable, frozen_after, _ = adam_step
    for path, value in frozen.items():
        np.testing.assert_array_equal(frozen_after[path], value, err_msg=path)
    unchanged = [
        p
        for p, v in trainable.items()
        if np.array_equal(new_trainable[p], v) and not p.endswith(KEY_BIASES_WITHOUT_EFFECT)
    ]
    assert not unchanged, f"Adam left {unchanged} unchanged"
