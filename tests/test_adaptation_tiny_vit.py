"""The paper's adaptation on a TinyViT image encoder (LiteMedSAM, MobileSAM): a new first convolution, LoRA on the
per-head fused qkv, proj and the MLP, cross-slice attention in the attention blocks, every trainable preset and
adapter files. References are built here from the head layout TinyViT documents ((q, k, v) side by side per head)
and from TinyViT's own window order (zero padding before the norm)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from optimised import optimised_jit
from random_params import ALL_TARGETS, randomise
from small_tiny_vit import TINY_VIT

from sam_jax.adaptation import (
    PRESETS,
    AdaptationConfig,
    AdaptationError,
    adapt,
    build_model,
    count_parameters,
    load_adapter,
    partition,
    save_adapter,
)
from sam_jax.adaptation.cross_slice import depth_attention
from sam_jax.config import sam_config
from sam_jax.flags_util import config_from_flags, define_flags, expand_flagfiles
from sam_jax.model import Sam
from sam_jax.model.abstract import abstract
from sam_jax.model.image_encoder import window_partition, window_unpartition
from sam_jax.model.layers import Buffer
from sam_jax.model.mask_decoder import KEY_BIASES_WITHOUT_EFFECT
from sam_jax.training.config import TrainConfig
from sam_jax.weights.io import assign, model_arrays

ROOT = Path(__file__).resolve().parents[1]

CONFIG = TINY_VIT
SLICES = 3


def _base(seed=0):
    """A random TinyViT SAM whose batch norms and attention biases are not at their (trivial) initial values."""
    sam = Sam(CONFIG, rngs=nnx.Rngs(seed))
    for i, (path, variable) in enumerate(nnx.to_flat_state(nnx.state(sam.image_encoder, nnx.Param))):
        if path[-2] == "bn" or path[-1] == "attention_biases":
            variable[...] = 0.5 + 0.2 * jax.random.normal(jax.random.key(100 + i), variable.shape)
    return sam


def _attention_blocks(model):
    return [block for stage in model.image_encoder.layers[1:] for block in stage.blocks]


@nnx.jit(static_argnums=(2,))
def _encode(model, images, slices):
    return model.encode_image(images, slices)


@nnx.jit(static_argnums=(4,))
def _forward(model, images, coords, labels, slices):
    return model.decode(model.encode_image(images, slices), coords, labels, multimask_output=True)


def _prompts(batch):
    rng = np.random.default_rng(0)
    coords = jnp.asarray(rng.uniform(0, CONFIG.image_size, (batch, 2, 2)), jnp.float32)
    return coords, jnp.asarray([[1, 0]] * batch, jnp.int32)


# --- the first convolution ---


def test_rgb_mean_embeds_equal_channels_as_the_three_channel_model_embeds_the_image_repeated():
    sam = _base()
    adapted = adapt(nnx.clone(sam), AdaptationConfig(patch_embed_init="rgb_mean", lora_rank=0), rngs=nnx.Rngs(5))
    gray = jax.random.normal(jax.random.key(2), (2, CONFIG.image_size, CONFIG.image_size, 1))
    # The stem's output (first Conv-BN, GELU, second Conv-BN): what follows sees the same input.
    stem = nnx.jit(lambda m, x: m.image_encoder.patch_embed(x))
    ours, theirs = stem(adapted, jnp.repeat(gray, 4, axis=-1)), stem(sam, jnp.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * float(jnp.abs(theirs).max()))


def test_random_first_conv_is_pytorchs_default_and_keeps_the_batch_norm():
    sam = _base()
    stem = sam.image_encoder.patch_embed.seq[0]
    bn_before = {name: np.asarray(getattr(stem.bn, name)[...]) for name in ("scale", "bias", "running_mean")}
    adapt(sam, AdaptationConfig(lora_rank=0), rngs=nnx.Rngs(5))
    stem = sam.image_encoder.patch_embed.seq[0]
    kernel = np.asarray(stem.c.kernel[...])
    assert kernel.shape == (1, 1, 4, 4) and stem.c.bias is None and sam.config.in_chans == 4  # half of width 8
    bound = 1 / np.sqrt(4 * 1 * 1)  # U(±1/√fan_in), fan_in = C_in·1·1
    assert np.abs(kernel).max() <= bound
    for name, value in bn_before.items():
        np.testing.assert_array_equal(getattr(stem.bn, name)[...], value, err_msg=name)
    assert _encode(sam, jnp.zeros((1, CONFIG.image_size, CONFIG.image_size, 4)), 1).shape == (1, 16, 16, 32)


@pytest.mark.parametrize("preset, stem", [("lite_medsam", (1, 1, 4, 32)), ("mobile_sam", (3, 3, 4, 32))])
def test_both_presets_take_the_papers_adaptation(preset, stem):
    """Shapes only (no compute): 4 channels, LoRA and cross-slice attention on either TinyViT stem."""
    config = sam_config(preset)
    adaptation = AdaptationConfig(lora_targets=ALL_TARGETS, cross_slice=True)
    model = abstract(lambda rngs: build_model(config, adaptation, rngs=rngs))
    assert model.image_encoder.patch_embed.seq[0].c.kernel.shape == stem
    image = jax.ShapeDtypeStruct((2, config.image_size, config.image_size, 4), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m.encode_image(x, 2), model, image).shape == (2, 64, 64, 256)


def test_zero_rel_pos_is_refused_tinyvit_has_no_such_tables():
    model = abstract(lambda rngs: Sam(CONFIG, rngs=rngs))
    with pytest.raises(AdaptationError, match="TinyViT image encoder: zero_rel_pos"):
        adapt(model, AdaptationConfig(zero_rel_pos=True), rngs=nnx.Rngs(0))


# --- LoRA ---


def _hand_qkv_kernel(layer, heads):
    """W + s·A·B of a LoRA-wrapped TinyViT qkv, placed column by column from the head layout: head h's q, k, v are
    columns h·3d + (0, 1, 2)·d + [0, d), and column h·d + j of a section's B is head h's j-th."""
    kernel = np.array(layer.kernel[...], np.float64)
    d = kernel.shape[0] // heads
    for part, section in enumerate("qkv"):
        if not hasattr(layer, f"lora_{section}_a"):
            continue
        delta = layer.scale * (
            np.asarray(getattr(layer, f"lora_{section}_a")[...], np.float64)
            @ np.asarray(getattr(layer, f"lora_{section}_b")[...], np.float64)
        )
        for h in range(heads):
            for j in range(d):
                kernel[:, h * 3 * d + part * d + j] += delta[:, h * d + j]
    return kernel


def test_lora_leaves_sit_on_tinyvits_layers_under_their_own_names():
    model = build_model(CONFIG, AdaptationConfig(lora_targets=ALL_TARGETS), rngs=nnx.Rngs(0))
    plain = {k: v.shape for k, v in model_arrays(Sam(CONFIG.replace(in_chans=4), rngs=nnx.Rngs(0))).items()}
    added = {k: tuple(v.shape) for k, v in model_arrays(model).items() if k not in plain}
    expected = {}
    for stage, c in ((1, 16), (2, 24), (3, 32)):
        for block in range(CONFIG.tiny_vit_depths[stage]):
            prefix = f"image_encoder.layers.{stage}.blocks.{block}"
            for section in "qkv":
                expected[f"{prefix}.attn.qkv.lora_{section}_a"] = (c, 4)
                expected[f"{prefix}.attn.qkv.lora_{section}_b"] = (4, c)
            for layer, fan_in, fan_out in (("attn.proj", c, c), ("mlp.fc1", c, 4 * c), ("mlp.fc2", 4 * c, c)):
                expected.update({f"{prefix}.{layer}.lora_a": (fan_in, 4), f"{prefix}.{layer}.lora_b": (4, fan_out)})
    assert added == expected


@pytest.mark.parametrize("targets", [("q", "v"), ("k",), ("q", "k", "v")])
def test_lora_on_the_fused_qkv_updates_each_heads_own_columns(targets):
    model = build_model(CONFIG, AdaptationConfig(lora_targets=targets), rngs=nnx.Rngs(0))
    randomise(model, nnx.LoRAParam, seed=3, scale=1.0)
    attn = model.image_encoder.layers[2].blocks[0].attn  # 3 heads
    x = np.random.default_rng(4).normal(size=(5, 24)).astype(np.float32)
    expected = x @ _hand_qkv_kernel(attn.qkv, heads=3) + np.asarray(attn.qkv.bias[...])
    np.testing.assert_allclose(attn.qkv(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attn.qkv.folded_kernel(), _hand_qkv_kernel(attn.qkv, heads=3), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_adapted_model_equals_the_base_exactly_at_step_zero():
    sam = _base()
    adapted = adapt(
        nnx.clone(sam),
        AdaptationConfig(modalities="t1n_t2w_t2f", lora_targets=ALL_TARGETS, cross_slice=True),
        rngs=nnx.Rngs(1),
    )
    images = jax.random.normal(jax.random.key(2), (2 * SLICES, CONFIG.image_size, CONFIG.image_size, 3))
    coords, labels = _prompts(2 * SLICES)
    # Compiled as users compile: under the tests' fast-compile settings XLA fuses the two programs differently and
    # their float32 results part in the last bits (7.7e-7).
    ref = optimised_jit(lambda m, *args: _forward(m, *args, 1))(sam, images, coords, labels)
    ours = optimised_jit(lambda m, *args: _forward(m, *args, SLICES))(adapted, images, coords, labels)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


# --- cross-slice attention ---


@pytest.fixture(scope="module")
def cross_slice_model():
    """LoRA on every target with random B (so the branch's use of LoRA is checked) and random non-zero gates."""
    model = adapt(_base(), AdaptationConfig(lora_targets=ALL_TARGETS, cross_slice=True), rngs=nnx.Rngs(0))
    randomise(model, nnx.LoRAParam, seed=1)
    for i, block in enumerate(_attention_blocks(model)):
        gate = block.cross_slice.gate
        gate[...] = jax.random.uniform(jax.random.key(10 + i), gate.shape, minval=0.5)
    return model


def _depth_reference(attn, normed, slices):
    """Attention across the slices of each sample, position by position, in plain NumPy, heads cut from TinyViT's
    per-head qkv layout."""
    n, h, w, c = normed.shape
    heads, d = attn.num_heads, c // attn.num_heads
    w_qkv, b_qkv = _hand_qkv_kernel(attn.qkv, heads), np.asarray(attn.qkv.bias[...], np.float64)
    w_proj = np.asarray(attn.proj.kernel[...], np.float64) + attn.proj.scale * (
        np.asarray(attn.proj.lora_a[...], np.float64) @ np.asarray(attn.proj.lora_b[...], np.float64)
    )
    b_proj = np.asarray(attn.proj.bias[...], np.float64)
    out = np.zeros((n, h, w, c))
    for sample in range(n // slices):
        rows = slice(sample * slices, (sample + 1) * slices)
        for i in range(h):
            for j in range(w):
                qkv = normed[rows, i, j].astype(np.float64) @ w_qkv + b_qkv  # (Z, 3C): this position in every slice
                mixed = np.zeros((slices, c))
                for head in range(heads):
                    q, k, v = (qkv[:, (3 * head + part) * d : (3 * head + part + 1) * d] for part in range(3))
                    logits = q @ k.T / np.sqrt(d)
                    weights = np.exp(logits - logits.max(-1, keepdims=True))
                    mixed[:, head * d : (head + 1) * d] = (weights / weights.sum(-1, keepdims=True)) @ v
                out[rows, i, j] = mixed @ w_proj + b_proj
    return out


def test_attention_block_attends_across_slices_at_each_position(cross_slice_model):
    block = cross_slice_model.image_encoder.layers[1].blocks[0]  # 32² tokens in 7×7 windows: padded to 35²
    x = jax.random.normal(jax.random.key(5), (2 * SLICES, 32, 32, 16))
    depth = _depth_reference(block.attn, np.asarray(block.attn.norm(x)), SLICES)
    # TinyViT's own order for the spatial part: zero-pad x, cut windows, then norm, qkv, attention, proj per window.
    attn = block.attn
    windows = window_partition(x, block.window_size)
    spatial = window_unpartition(attn.proj(attn.mix(attn.qkv(attn.norm(windows)))), block.window_size, (32, 32))
    expected = block.local_conv(x + spatial + block.cross_slice.gate[...] * jnp.asarray(depth, jnp.float32))
    expected = expected + block.mlp(expected)
    got = nnx.jit(lambda b, x: b(x, SLICES))(block, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * float(jnp.abs(expected).max()))


@pytest.mark.slow
def test_slices_interact_only_through_the_gated_branch(cross_slice_model):
    images = jax.random.normal(jax.random.key(2), (2 * SLICES, CONFIG.image_size, CONFIG.image_size, 4))
    perturbed = images.at[1].add(jax.random.normal(jax.random.key(3), images.shape[1:]))  # sample 0, slice 1
    others = np.array([0, 2, 3, 4, 5])
    zero_gate = nnx.clone(cross_slice_model)
    for block in _attention_blocks(zero_gate):
        block.cross_slice.gate[...] = jnp.zeros_like(block.cross_slice.gate[...])
    before, after = _encode(zero_gate, images, SLICES), _encode(zero_gate, perturbed, SLICES)
    np.testing.assert_array_equal(after[others], before[others])
    assert float(jnp.abs(after[1] - before[1]).max()) > 1e-3
    before, after = _encode(cross_slice_model, images, SLICES), _encode(cross_slice_model, perturbed, SLICES)
    np.testing.assert_array_equal(after[3:], before[3:])  # the other sample
    for j in (0, 2):  # the perturbed slice's neighbours in its own sample (the neck's norms damp the change)
        assert float(jnp.abs(after[j] - before[j]).max()) > 1e-4


def test_one_slice_attends_to_itself_alone(cross_slice_model):
    """With Z = 1 the softmax is over one key, so the branch is proj(v): v gathered head by head."""
    attn = cross_slice_model.image_encoder.layers[3].blocks[0].attn  # 4 heads of 8
    x = jax.random.normal(jax.random.key(6), (2, 16, 16, 32))
    qkv = attn.qkv(x)
    v = jnp.concatenate([qkv[..., 24 * h + 16 : 24 * h + 24] for h in range(4)], axis=-1)
    np.testing.assert_allclose(depth_attention(attn, qkv, 1), attn.proj(v), rtol=1e-5, atol=1e-5)


# --- trainable presets ---


def _flat(state):
    return {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(state)}


def test_presets_pick_the_intended_parts_and_never_a_batch_norm_statistic(cross_slice_model):
    # TinyViT's "patch embedding" is its whole stem (two Conv-BN): the analogue of the ViT's patch convolution.
    stem = "image_encoder.patch_embed."
    expected = {
        "lora": lambda p: ".lora_" in p or p.startswith((stem, "mask_decoder.")) or p.endswith("cross_slice.gate"),
        "patch_embed_only": lambda p: p.startswith(stem),
        "lora_frozen_patch": lambda p: ".lora_" in p or p.startswith("mask_decoder.") or p.endswith("cross_slice.gate"),
        "full": lambda p: True,
        "decoder_only": lambda p: p.startswith("mask_decoder."),
        "none": lambda p: False,
    }
    assert set(expected) == set(PRESETS)
    everything = _flat(nnx.state(cross_slice_model))
    # Batch-norm statistics and the prompt encoder's Gaussian are constants, never trained.
    constant = lambda p: p.endswith(("running_mean", "running_var", "num_batches_tracked", "gaussian_matrix"))  # noqa: E731
    # Per Conv-BN: the kernel, the norm's scale and shift, and its 3 statistics.
    assert len([p for p in everything if p.startswith(stem)]) == 2 * 6
    for preset, trains in expected.items():
        _, trainable, frozen = partition(cross_slice_model, preset)
        assert set(_flat(trainable)) == {p for p in everything if trains(p) and not constant(p)}, preset
        assert set(_flat(trainable)) | set(_flat(frozen)) == set(everything)


# LiteMedSAM's counts, from its architecture: LoRA rank 4 on q, v (2·8C) and the MLP (2·20C) of the 2, 6 and 2 blocks
# of widths 128, 160, 320; the stem 1×1 C_in→32 and 32→64 with their norms' scale and shift; SAM's mask decoder.
LITE_LORA = 56 * (2 * 128 + 6 * 160 + 2 * 320)
LITE_STEM = {c: c * 32 + 2 * 32 + 32 * 64 + 2 * 64 for c in (3, 4)}
MASK_DECODER = 4_058_340


def lite_medsam_counts(modalities: str):
    """preset → (trainable, frozen) for lite_medsam adapted with the paper's defaults and `modalities`."""
    structure = abstract(
        lambda rngs: build_model(sam_config("lite_medsam"), AdaptationConfig(modalities=modalities), rngs=rngs)
    )
    return {p: tuple(count_parameters(s) for s in partition(structure, p)[1:]) for p in PRESETS}


@pytest.mark.parametrize("modalities", ["all4", "t2f_x3"])
def test_lite_medsam_preset_counts(modalities):
    counts = lite_medsam_counts(modalities)
    c = len(AdaptationConfig(modalities=modalities).modalities)
    plain = abstract(lambda rngs: Sam(sam_config("lite_medsam"), rngs=rngs))
    base = count_parameters(nnx.state(plain, nnx.Param))  # the package's count: test_tiny_vit_parity
    buffers = count_parameters(nnx.state(plain, Buffer))
    full = base - LITE_STEM[3] + LITE_STEM[c] + LITE_LORA
    trainable = {
        "lora": LITE_LORA + MASK_DECODER + (LITE_STEM[c] if c != 3 else 0),
        "patch_embed_only": LITE_STEM[c],
        "lora_frozen_patch": LITE_LORA + MASK_DECODER,
        "full": full,
        "decoder_only": MASK_DECODER,
        "none": 0,
    }
    assert counts == {p: (t, full + buffers - t) for p, t in trainable.items()}
    print(modalities, counts)


# --- adapter files and gradients ---


@pytest.mark.slow
def test_adapter_round_trip_on_lite_medsam(tmp_path):
    config = sam_config("lite_medsam", image_size=64)  # LiteMedSAM's widths; the input size changes no parameter
    adaptation = AdaptationConfig(lora_targets=ALL_TARGETS, cross_slice=True)
    # Filled from NumPy: run one by one, its initialisers compile ~200 programs, seconds for what a file holds.
    model = abstract(lambda rngs: build_model(config, adaptation, rngs=rngs))
    rng = np.random.default_rng(0)
    assign(model, {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in model_arrays(model).items()})
    _, trainable_state, _ = partition(model, adaptation.trainable)
    trainable_state = jax.tree.map(lambda x: x + 1.0, trainable_state)  # unlike any fresh initialisation
    trainable = _flat(trainable_state)
    assert any(p.endswith("seq.0.c.kernel") for p in trainable) and any("cross_slice" in p for p in trainable)
    save_adapter(tmp_path / "adapter.safetensors", trainable_state, adaptation, "ab" * 32)
    other = nnx.clone(model)  # its trainable leaves are the fresh ones, not the file's
    _, _, frozen_before = partition(other, adaptation.trainable)
    load_adapter(other, tmp_path / "adapter.safetensors", adaptation, "ab" * 32)
    _, trainable_after, frozen_after = partition(other, adaptation.trainable)
    for name, value in _flat(trainable_after).items():
        np.testing.assert_array_equal(value, trainable[name], err_msg=name)
    for name, value in _flat(frozen_before).items():
        np.testing.assert_array_equal(_flat(frozen_after)[name], value, err_msg=name)


@pytest.mark.slow
def test_every_trainable_leaf_gets_a_gradient(cross_slice_model):
    graphdef, trainable, frozen = partition(cross_slice_model, "lora")
    images = jax.random.normal(jax.random.key(7), (SLICES, CONFIG.image_size, CONFIG.image_size, 4))
    coords, labels = _prompts(SLICES)

    def loss(trainable):
        model = nnx.merge(graphdef, trainable, frozen)
        embeddings, total = model.encode_image(images, SLICES), 0.0
        for multimask in (False, True):  # together they use all four mask tokens and IoU outputs
            masks, iou = model.decode(embeddings, coords, labels, multimask_output=multimask)
            weights = jnp.cos(jnp.arange(masks.size, dtype=jnp.float32)).reshape(masks.shape)
            total = total + jnp.mean(weights * masks) + jnp.mean(iou * jnp.arange(iou.size).reshape(iou.shape))
        return total

    grads = _flat(jax.jit(jax.grad(loss))(trainable))
    assert set(grads) == set(_flat(trainable))
    zero = [p for p, g in grads.items() if not np.any(g) and not p.endswith(KEY_BIASES_WITHOUT_EFFECT)]
    assert not zero, f"zero gradients for {zero}"


# --- the flagfiles of LiteMedSAM's rows ---

LITE_MEDSAM_ROWS = {  # flagfile → (trainable preset, input channels)
    "lora.flags": ("lora", 4),
    "lora_rgb_mean.flags": ("lora", 4),
    **{f"lora_{layout}.flags": ("lora", 3) for layout in ("t1n_x3", "t1c_x3", "t2w_x3", "t2f_x3", "t1n_t2w_t2f")},
    "two_step_1.flags": ("patch_embed_only", 4),
    "two_step_2.flags": ("lora_frozen_patch", 4),
    "full.flags": ("full", 4),
    "decoder_only.flags": ("decoder_only", 3),
}


def test_every_lite_medsam_training_flagfile_is_a_row():
    found = {p.name for p in (ROOT / "train" / "lite_medsam").glob("*.flags")}
    assert found - {"lite_medsam.flags"} - {n for n in found if n.startswith("zero_shot")} == set(LITE_MEDSAM_ROWS)


@pytest.mark.parametrize("name", sorted(LITE_MEDSAM_ROWS))
def test_lite_medsam_flagfiles_build_their_rows(name):
    """Each flagfile, as train.main reads it, gives LiteMedSAM at 256² on its own input with box prompts, and the
    model it builds trains the row's parameters: counted by hand above."""
    values = flags.FlagValues()
    define_flags(TrainConfig, values)
    values(["train.main", *expand_flagfiles([f"--flagfile=lite_medsam/{name}"], ROOT / "train")])
    cfg = config_from_flags(TrainConfig, values)
    assert (cfg.model_type, cfg.image_size, cfg.normalisation, cfg.prompt) == ("lite_medsam", 256, "lite_medsam", "box")
    preset, chans = LITE_MEDSAM_ROWS[name]
    assert (cfg.trainable, cfg.in_chans, cfg.workdir) == (preset, chans, f"workdir/lite_medsam_{name[:-6]}")
    assert cfg.patch_embed_init == ("rgb_mean" if "rgb_mean" in name else "random")
    structure = abstract(lambda rngs: build_model(cfg.sam_config(), cfg, rngs=rngs))
    lora = LITE_LORA if cfg.lora_rank else 0
    expected = {
        "lora": lora + MASK_DECODER + (LITE_STEM[chans] if chans != 3 else 0),
        "patch_embed_only": LITE_STEM[chans],
        "lora_frozen_patch": lora + MASK_DECODER,
        "decoder_only": MASK_DECODER,
    }
    trainable = count_parameters(partition(structure, preset)[1])
    if preset == "full":  # every parameter: the plain model's, its stem widened to 4 channels, no LoRA
        plain = abstract(lambda rngs: Sam(sam_config("lite_medsam"), rngs=rngs))
        assert trainable == count_parameters(nnx.state(plain, nnx.Param)) - LITE_STEM[3] + LITE_STEM[4]
    else:
        assert trainable == expected[preset]
