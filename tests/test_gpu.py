"""The GPU path against the XLA path it stands in for: cuDNN's flash attention in the model's forward and backward,
the bf16 train step against the fp32 one, and what only a GPU does with the step (donated buffers freed, no hidden
host transfer). Marked `gpu` and skipped on any other backend; `python benchmarks/gpu_check.py` runs them
(`pytest -m gpu tests/test_gpu.py`) before its speed table."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.bench import _synthetic_batch
from sam_jax.adaptation import build_model
from sam_jax.config import sam_config
from sam_jax.model import Sam
from sam_jax.model.abstract import abstract
from sam_jax.model.attention import attend
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import build_train_step, cast_floats

pytestmark = pytest.mark.gpu  # skipped off a GPU by conftest.py

DEMO = sam_config("demo")
CUDNN_CALL = "__cudnn$fmha"  # the custom call jax.nn.dot_product_attention(implementation="cudnn") lowers to


def _relative_error(got, expected) -> float:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_cudnn_attention_matches_plain_attention():
    """cuDNN's kernel on the folded vectors (bf16) against plain fp32 attention with the bias added to the logits,
    on the same inputs (plain attention is pinned to an explicit float64 reference in tests/test_perf_attention.py)."""
    rng = np.random.default_rng(0)
    kh = kw = 8
    shape = (2, 3, kh * kw, 64)
    inputs = [rng.normal(size=s) for s in (shape, shape, shape, shape[:3] + (kh,), shape[:3] + (kw,))]
    args = [jnp.asarray(x, jnp.bfloat16) for x in inputs]
    with jax.default_matmul_precision("highest"):
        expected = attend(*(a.astype(jnp.float32) for a in args), kernel="plain")
    out = attend(*args, kernel="cudnn")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2)


def _demo_forward(kernel: str, dtype):
    """The demo SAM's embeddings and mask logits for two images with one click each, every kernel with the same
    random weights, and the program's StableHLO text."""
    state = nnx.state(Sam(DEMO, rngs=nnx.Rngs(0)))
    graphdef = nnx.graphdef(abstract(lambda rngs: Sam(DEMO.replace(attention=kernel), rngs=rngs)))
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(2, DEMO.image_size, DEMO.image_size, DEMO.in_chans)), dtype)
    coords = jnp.asarray(rng.uniform(0, DEMO.image_size, (2, 1, 2)), jnp.float32)
    labels = jnp.ones((2, 1), jnp.int32)

    @jax.jit
    def run(state, images, coords, labels):
        model = nnx.merge(graphdef, state)
        embeddings = model.encode_image(images)
        logits, _ = model.decode(embeddings, coords, labels)
        return embeddings.astype(jnp.float32), logits.astype(jnp.float32)

    state = cast_floats(state, dtype)
    return run(state, images, coords, labels), run.lower(state, images, coords, labels).as_text()


def test_cudnn_model_forward_is_as_close_to_fp32_as_xla_bf16():
    """bf16 through cuDNN's kernel stays as close to the fp32 model as bf16 through XLA does, in the embeddings and
    the mask logits; and the cuDNN model's program does call cuDNN (jax.nn.dot_product_attention without
    implementation='cudnn' would silently fall back to XLA)."""
    with jax.default_matmul_precision("highest"):
        reference, _ = _demo_forward("plain", jnp.float32)
    xla, xla_program = _demo_forward("folded", jnp.bfloat16)
    cudnn, cudnn_program = _demo_forward("cudnn", jnp.bfloat16)
    assert CUDNN_CALL in cudnn_program and CUDNN_CALL not in xla_program
    for name, ours, theirs, expected in zip(("embeddings", "logits"), cudnn, xla, reference):
        error, xla_error = _relative_error(ours, expected), _relative_error(theirs, expected)
        assert error < 5e-2 and error <= 2 * xla_error + 1e-3, (name, error, xla_error)


def _one_step(precision: str, attention: str, remat: bool = False):
    """One SGD step of the tiny LoRA model with cross-slice attention (two slices) on a synthetic host batch, all
    arguments on the device: (loss, update, whether the old trainable buffers were freed, the step's StableHLO)."""
    cfg = TrainConfig(
        model_type="tiny",
        image_size=128,
        attention=attention,
        remat_attention=remat,
        cross_slice=True,
        slices=2,
        loss="bce",
        precision=precision,
        trainable="lora",
    )
    built = build_train_step(cfg, build_model(cfg.sam_config(), cfg, rngs=nnx.Rngs(0)), optax.sgd(1.0))
    # A non-zero LoRA B and gate, so that gradients reach every leaf.
    trainable = jax.device_put(jax.tree.map(lambda x: x + 0.01, built.trainable))
    frozen, opt_state = jax.device_put(built.frozen), jax.device_put(built.opt_state)
    batch, rng = jax.device_put(_synthetic_batch(1, 2)), jax.random.key(0)
    step = built.step
    program = step.lower(trainable, opt_state, frozen, batch, rng).as_text()
    before = jax.tree.map(jnp.copy, trainable)
    with jax.transfer_guard("disallow"):  # everything is on the device already: the step must not copy
        after, _, metrics = step(trainable, opt_state, frozen, batch, rng)
        jax.block_until_ready(after)
    freed = all(x.is_deleted() for x in jax.tree.leaves(trainable))
    return float(metrics["loss"]), jax.tree.map(lambda a, b: a - b, after, before), freed, program


@pytest.fixture(scope="module")
def float32_step():
    return _one_step("float32", "plain")


@pytest.mark.parametrize("attention,remat", [("cudnn", False), ("folded", True)], ids=["cudnn", "folded_remat"])
def test_bfloat16_train_step_follows_float32(float32_step, attention, remat):
    """The GPU configurations' step (bf16 with cuDNN attention, or folded with remat) against the fp32 step on the
    same batch: the loss within 2%, the update in the same direction; the donated trainable buffers are freed (the
    step keeps one copy of them); cuDNN runs in the backward pass too."""
    loss32, update32, _, _ = float32_step
    loss16, update16, freed, program = _one_step("bfloat16", attention, remat)
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(update16))  # trainable leaves stay fp32
    flat32, flat16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]) for u in (update32, update16))
    cosine = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
    assert cosine > 0.99, cosine
    assert freed, "the step's donated trainable buffers are still alive: the step holds two copies"
    if attention == "cudnn":
        assert re.search(re.escape(CUDNN_CALL) + r"\w*Backward", program), "no cuDNN attention in the backward pass"
