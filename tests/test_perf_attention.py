"""Attention levers: the folded relative-position form and remat compute what SAM's plain attention computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch_reference import assert_close, flax_twin, torch_sam

from sam_jax.adaptation import AdaptationConfig, adapt
from sam_jax.config import sam_config
from sam_jax.model import Sam, attention
from sam_jax.model.attention import attend, fold_rel_pos
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import build_train_step

CONFIG = sam_config("tiny")


def _inputs(kh=3, kw=4, d=5, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, 3, kh * kw, d)
    q, k, v = (rng.normal(size=shape) for _ in range(3))
    rel_h, rel_w = rng.normal(size=shape[:3] + (kh,)), rng.normal(size=shape[:3] + (kw,))
    return q, k, v, rel_h, rel_w


def _reference(q, k, v, rel_h, rel_w):
    """Explicit loops over key positions in float64: logit = q·k/√d + rel_h[row] + rel_w[col]."""
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    for key in range(kh * kw):
        logits[..., key] += rel_h[..., key // kw] + rel_w[..., key % kw]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", weights, v)


def test_folded_vectors_give_the_biased_logits():
    q, k, v, rel_h, rel_w = _inputs()
    q2, k2 = fold_rel_pos(*(jnp.asarray(x, jnp.float32) for x in (q, k, rel_h, rel_w)))
    kw = rel_w.shape[-1]
    expected = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    expected += np.stack([rel_h[..., j // kw] + rel_w[..., j % kw] for j in range(k.shape[2])], -1)
    np.testing.assert_allclose(np.einsum("bhqd,bhkd->bhqk", q2, k2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "folded"])
@pytest.mark.parametrize("remat", [False, True])
def test_attention_matches_the_explicit_reference(implementation, remat):
    inputs = _inputs()
    out = attend(*(jnp.asarray(x, jnp.float32) for x in inputs), kernel=implementation, remat=remat)
    np.testing.assert_allclose(out, _reference(*inputs), rtol=1e-5, atol=1e-5)


def test_folded_without_relative_positions_is_plain_attention():
    q, k, v, _, _ = _inputs()
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    np.testing.assert_allclose(attend(*args, kernel="folded"), attend(*args), rtol=1e-6, atol=1e-6)


def _gradients(implementation, remat):
    inputs = [jnp.asarray(x, jnp.float32) for x in _inputs(seed=1)]
    weights = jnp.asarray(np.random.default_rng(2).normal(size=inputs[0].shape), jnp.float32)

    def loss(*args):
        return (attend(*args, kernel=implementation, remat=remat) * weights).sum()

    return jax.grad(loss, argnums=range(5))(*inputs)


@pytest.mark.parametrize("implementation", ["plain", "folded"])
def test_remat_gives_identical_gradients(implementation):
    for kept, recomputed in zip(_gradients(implementation, False), _gradients(implementation, True)):
        np.testing.assert_allclose(recomputed, kept, rtol=1e-6, atol=1e-7)


def test_folded_gradients_match_plain():
    for folded, plain in zip(_gradients("folded", False), _gradients("plain", False)):
        np.testing.assert_allclose(folded, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "folded"])
def test_gradients_match_autodiff_of_the_explicit_softmax(implementation):
    """Our softmax·v has a hand-written backward (flash attention's row-sum identity); autodiff pins it."""
    inputs = [jnp.asarray(x, jnp.float32) for x in _inputs(seed=1)]
    weights = jnp.asarray(np.random.default_rng(2).normal(size=inputs[0].shape), jnp.float32)

    def explicit(q, k, v, rel_h, rel_w):
        kw = rel_w.shape[-1]
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
        logits = logits + jnp.repeat(rel_h, kw, axis=-1) + jnp.tile(rel_w, rel_h.shape[-1])
        return (jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v) * weights).sum()

    expected = jax.grad(explicit, argnums=range(5))(*inputs)
    for ours, ref in zip(_gradients(implementation, False), expected):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["plain", "folded"])
def test_query_blocks_give_the_same_attention_and_gradients(monkeypatch, implementation):
    """On CPU long attentions go a block of queries at a time; force blocks of 3 queries on the small inputs."""
    whole = _gradients(implementation, False)
    inputs = [jnp.asarray(x, jnp.float32) for x in _inputs()]
    expected = attend(*inputs, kernel=implementation)
    monkeypatch.setattr(attention, "CPU_LOGITS_BLOCK_BYTES", 1000)
    assert attention._query_blocks(inputs[0], inputs[1]) == 4
    np.testing.assert_allclose(attend(*inputs, kernel=implementation), expected, rtol=1e-6, atol=1e-6)
    for blocked, ref in zip(_gradients(implementation, False), whole):
        np.testing.assert_allclose(blocked, ref, rtol=1e-5, atol=1e-6)


def test_unknown_kernel_is_refused_by_the_config():
    with pytest.raises(ValueError, match="attention 'bogus': expected one of plain, folded, cudnn"):
        sam_config("tiny", attention="bogus")


@pytest.mark.parametrize("index", [0, 1], ids=["windowed", "global"])
def test_folded_blocks_keep_parity_with_pytorch_sam(index):
    ref = torch_sam(CONFIG)
    ours = flax_twin(CONFIG.replace(attention="folded"), ref)
    x = np.random.default_rng(1).normal(size=(2, CONFIG.grid_size, CONFIG.grid_size, CONFIG.encoder_embed_dim))
    x = x.astype(np.float32)
    out = ours.image_encoder.blocks[index](jnp.asarray(x))
    assert_close(out, ref.image_encoder.blocks[index](torch.from_numpy(x)).detach().numpy())


def _one_step(attention, remat, dtype="float32"):
    config = CONFIG.replace(attention=attention, remat_attention=remat)
    model = adapt(Sam(config, rngs=nnx.Rngs(0)), AdaptationConfig(lora_rank=2, cross_slice=True), rngs=nnx.Rngs(1))
    train = build_train_step(
        TrainConfig(image_size=CONFIG.image_size, loss="bce", precision=dtype, trainable="lora"), model, optax.sgd(1.0)
    )
    # A non-zero LoRA B and gate, so that gradients reach every leaf.
    trainable = jax.tree.map(lambda x: x + 0.01, train.trainable)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(1, 2, 40, 40, 4)).astype(np.float32),
        "mask": (rng.random((1, 2, 40, 40)) > 0.5).astype(np.uint8),
        "valid_hw": np.array([[40, 36]], np.int32),
        "point_coords": rng.uniform(0, 36, (1, 2, 1, 2)).astype(np.float32),
        "point_labels": np.ones((1, 2, 1), np.int32),
    }
    before = jax.tree.map(jnp.copy, trainable)
    after, _, metrics = train.step(trainable, train.opt_state, train.frozen, batch, jax.random.key(0))
    return metrics["loss"], jax.tree.map(lambda a, b: a - b, after, before)


@pytest.fixture(scope="module")
def plain_step():
    """The float32 step with SAM's plain attention, which the levers' steps follow."""
    return _one_step("plain", False)


@pytest.mark.slow
def test_train_step_with_folded_attention_and_remat_matches_plain(plain_step):
    plain_loss, plain_update = plain_step
    loss, update = _one_step("folded", True)
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
    for got, expected in zip(jax.tree.leaves(update), jax.tree.leaves(plain_update)):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("attention", ["plain", "folded"])
@pytest.mark.slow
def test_bfloat16_step_follows_float32(plain_step, attention):
    """The GPU configuration's precision, through every hand-written backward (LoRA, softmax·v), on CPU."""
    loss32, update32 = plain_step
    loss16, update16 = _one_step(attention, True, "bfloat16")
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    flat32, flat16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]) for u in (update32, update16))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(update16))  # trainable leaves stay fp32
    cosine = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
    assert cosine > 0.99, cosine


def test_cudnn_setting_leaves_fp32_attention_to_xla():
    """cuDNN's kernel takes 16-bit inputs only; fp32 calls (the decoder under bf16 training) take the folded path.
    The cuDNN kernel itself is checked on a GPU (tests/test_gpu.py)."""
    q, k, v, rel_h, rel_w = _inputs()
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v, rel_h, rel_w)]
    out = attend(*args, kernel="cudnn")
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, rel_h, rel_w), atol=1e-5)


def test_cudnn_setting_leaves_odd_sequence_lengths_to_xla():
    """JAX's cuDNN path refuses odd sequence lengths in training (a 3×3 window): they take the folded path, which
    runs here on CPU where cuDNN would fail."""
    q, k, v, rel_h, rel_w = _inputs(kh=3, kw=3, d=8)
    args = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, rel_h, rel_w)]
    out = attend(*args, kernel="cudnn")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _reference(q, k, v, rel_h, rel_w), atol=3e-2)
