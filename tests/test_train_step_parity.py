"""One training step pinned to the paper's PyTorch LoRA SAM (tests/torch_sam_lora.py): forward, BCE, backward and
Adam, fp32, tiny config, random weights with a nonzero LoRA B.

Both sides start from the same weights and see the same images, clicks and soft low-resolution target (our step's
`target_to_low_res`, handed to PyTorch, so the frame transform is not what is compared). Checked per trainable leaf,
each to 1e-4: the loss; the gradient, of its layer's gradient scale; each side's update new − old against Adam's
first step on that side's gradient, of lr (Adam moves every element by ≈ lr·sign(g), so lr is the update's scale,
and lr = 1e-2 keeps new − old well above fp32 rounding); ours against PyTorch's update, and the parameters after the
step, of lr and of the leaf's scale, on the elements whose gradient sign the two sides must share.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch_reference import randomise_parameters, state_dict_numpy, to_numpy
from torch_sam_lora import LoRASam
from torch_sam_lora import make_train_step as torch_train_step

from sam_jax.adaptation import AdaptationConfig, build_model
from sam_jax.adaptation.sites import QKV_SECTIONS
from sam_jax.config import sam_config
from sam_jax.model.abstract import abstract
from sam_jax.model.frame import target_to_low_res, to_model_frame
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import build_train_step
from sam_jax.weights.io import assign
from sam_jax.weights.params import flax_path, torch_to_flax

CONFIG = sam_config("tiny")  # 128² input, 8×8 tokens, 32×32 low-res logits
LR = 1e-2
REL = 1e-4
GROUPS = {"LoRA": ".lora_", "patch embed": "image_encoder.patch_embed.", "mask decoder": "mask_decoder."}
# Gradient elements within this fraction of their layer's largest gradient have no sign both sides must share (the
# gradients agree to REL of it), and Adam's first step maps either sign to ±lr: their gradients are compared, and
# each side's update against Adam's step on its own gradient, but not the two updates against each other.
SIGN_FLOOR = 2 * REL
EPS = 1e-8


def _keep_gradients():
    """An optax stage passing gradients through unchanged and keeping them as its state (read after the step)."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params), lambda grads, state, params=None: (grads, grads)
    )


def _ours(torch_arrays, shapes):
    """PyTorch LoRASam names → our paths: the base layers through the weights' conversion table; LoRA factors
    (`<layer>.a.<i>`, `<layer>.b.<i>`, already (in, r) and (r, out) on both sides) renamed to `lora_<section>_a/b`."""
    base, lora = {}, {}
    for key, value in torch_arrays.items():
        m = re.fullmatch(r"(.*)\.(a|b)\.(\d+)", key)
        if m is None:
            base[key.replace(".base.", ".")] = value
            continue
        layer, factor, i = m.groups()
        section = (QKV_SECTIONS[(0, 2)[int(i)]] + "_") if layer.endswith(".qkv") else ""  # targets (0, 2): q, v
        lora[f"{layer}.lora_{section}{factor}"] = value
    out = torch_to_flax(base, {flax_path(k): shapes[flax_path(k)] for k in base})
    for path, value in lora.items():
        assert tuple(value.shape) == shapes[path], (path, value.shape, shapes[path])
    return {**out, **lora}


def _flat(state):
    return {".".join(map(str, p)): np.array(v[...], np.float64) for p, v in nnx.to_flat_state(state)}


def _batch(seed=0):
    """Two slices at the model's input size (canvas = valid size = 128), one positive click inside each tumour."""
    s = CONFIG.image_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    centres = [(40, 70, 22), (85, 50, 30)]  # (row, col, radius)
    masks = np.stack([(yy - r) ** 2 + (xx - c) ** 2 < rad**2 for r, c, rad in centres]).astype(np.uint8)
    coords = np.array([[[c + 3.0, r - 5.0]] for r, c, _ in centres], np.float32)  # (x, y), inside each disc
    return {
        "image": rng.normal(size=(2, 1, s, s, 4)).astype(np.float32),
        "mask": masks[:, None],
        "valid_hw": np.full((2, 2), s, np.int32),
        "point_coords": coords[:, None],
        "point_labels": np.ones((2, 1, 1), np.int32),
    }


def _report(figures):
    return "\n".join(
        f"  {name:<13} " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()) for name, row in figures.items()
    )


def _torch_trainable(ref, shapes, attribute=None):
    """LoRASam's trainable parameters (or their gradients, zero where PyTorch left none) at our paths, float64."""
    out = {}
    for name, p in ref.named_parameters():
        if p.requires_grad:
            value = p if attribute is None else getattr(p, attribute)
            out[name] = np.zeros(p.shape) if value is None else np.array(to_numpy(value), np.float64)  # a copy
    return _ours(out, shapes)


@pytest.fixture(scope="module")
def stepped():
    """One step on each side from the same weights: {before, after, grad, loss} for ours and for PyTorch's."""
    torch.manual_seed(0)
    ref = LoRASam(CONFIG)
    randomise_parameters(ref)  # every weight random, LoRA A and B included (a zero B would leave A without gradient)

    # Built abstractly (eager initialisers cost half a minute here), then every variable is filled from PyTorch.
    model = abstract(lambda rngs: build_model(CONFIG, AdaptationConfig(), rngs=rngs))
    shapes = {".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model))}
    arrays = _ours({k: v.copy() for k, v in state_dict_numpy(ref).items()}, shapes)  # JAX may alias NumPy
    assert set(arrays) == set(shapes), sorted(set(arrays) ^ set(shapes))  # every variable filled, nothing extra
    assign(model, arrays)

    batch = _batch()
    s = CONFIG.image_size
    framed, scale = jax.jit(to_model_frame, static_argnums=2)(batch["image"][:, 0], batch["valid_hw"], s)
    # The step's resize is the identity here, clicks included: PyTorch gets the host arrays as they are.
    np.testing.assert_array_equal(np.asarray(scale), 1.0)
    np.testing.assert_allclose(np.asarray(framed), batch["image"][:, 0], rtol=0, atol=1e-6)
    low_res = jax.jit(target_to_low_res, static_argnums=2, static_argnames="low_res")
    target = np.array(low_res(batch["mask"][:, 0], batch["valid_hw"], s, low_res=CONFIG.mask_input_size))
    assert target.shape == (2, s // 4, s // 4) and ((target > 0) & (target < 1)).any()  # soft at the edges

    # The step under test, as a paper run configures it: LoRA, BCE, fp32, one click, one mask.
    train = build_train_step(
        TrainConfig(model_type="tiny", image_size=s, loss="bce", trainable="lora"),
        model,
        optax.chain(_keep_gradients(), optax.adam(LR)),
    )
    ours = {"before": _flat(train.trainable)}
    new, opt_state, metrics = train.step(
        train.trainable, train.opt_state, train.frozen, jax.device_put(batch), jax.random.key(0)
    )
    ours.update(after=_flat(new), grad=_flat(opt_state[0]), loss=float(metrics["loss"]))

    theirs = {"before": _torch_trainable(ref, shapes)}
    images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(batch["image"][:, 0], -1, 1)))
    theirs["loss"] = torch_train_step(ref, lr=LR)(
        images,
        torch.from_numpy(batch["point_coords"][:, 0]),
        torch.from_numpy(batch["point_labels"][:, 0]),
        torch.from_numpy(target[:, None]),
    )
    theirs.update(after=_torch_trainable(ref, shapes), grad=_torch_trainable(ref, shapes, "grad"))
    return ours, theirs


def _group(path):
    return next((g for g, marker in GROUPS.items() if marker in path), None)


def _layer_scales(grads):
    """Each leaf's gradient scale: the largest gradient of its layer (a bias beside its kernel). A layer's leaf can
    have a gradient that is zero in exact arithmetic (attention's key bias: softmax ignores a shift common to all
    keys), and both sides then hold rounding noise; against the layer's scale that noise is small, as it should be."""
    layers = {}
    for path, g in grads.items():
        layer = path.rsplit(".", 1)[0]
        layers[layer] = max(layers.get(layer, 0.0), float(np.abs(g).max()))
    return {path: layers[path.rsplit(".", 1)[0]] for path in grads}


def _adam_first_step(g):
    """Adam's first update for gradient g (m̂ = g, v̂ = g²): −lr·g / (|g| + eps), PyTorch's and optax's eps 1e-8."""
    return -LR * g / (np.abs(g) + EPS)


@pytest.mark.slow
def test_one_adam_step_matches_pytorch(stepped):
    ours, theirs = stepped
    assert set(ours["after"]) == set(theirs["after"]), sorted(set(ours["after"]) ^ set(theirs["after"]))
    assert all(_group(p) for p in ours["after"]), [p for p in ours["after"] if not _group(p)]
    assert {_group(p) for p in ours["after"]} == set(GROUPS)
    assert all(np.array_equal(ours["before"][p], theirs["before"][p]) for p in ours["before"])  # the same start

    scales = _layer_scales(theirs["grad"])
    # Only the IoU head and the three multimask outputs are off the single-mask loss, and attention's key biases have
    # none in exact arithmetic; everything else, LoRA's A and B included, has a gradient worth comparing.
    no_gradient = {p for p, g in theirs["grad"].items() if not np.abs(g).max() > 1e-2 * scales[p]}
    off_loss = (
        "mask_decoder.iou_prediction_head.",
        *(f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3)),
    )
    assert no_gradient == {p for p in theirs["grad"] if p.startswith(off_loss) or p.endswith(".k_proj.bias")}
    figures = {g: {"grad": 0.0, "adam": 0.0, "update": 0.0, "param": 0.0} for g in GROUPS}
    failures = []
    compared = 0
    for path in sorted(ours["after"]):
        g_ours, g_ref, g_scale = ours["grad"][path], theirs["grad"][path], scales[path]
        d_ours = ours["after"][path] - ours["before"][path]
        d_ref = theirs["after"][path] - theirs["before"][path]
        # Near |g| ~ eps Adam amplifies a gradient's rounding difference (4e-7 of the scale became 1e-4 of lr on a
        # key projection): what the two gradients' difference explains through Adam is allowed on top of REL.
        explained = np.abs(_adam_first_step(g_ours) - _adam_first_step(g_ref))
        # Elements whose sign both sides must share (their gradients agree to REL of the scale).
        signed = np.abs(g_ref) > SIGN_FLOOR * g_scale
        compared += int(signed.sum())
        errors = {
            # a layer with no gradient at all (IoU head, multimask outputs) must get exactly none on our side either
            "grad": np.abs(g_ours - g_ref).max() / g_scale if g_scale > 0 else np.abs(g_ours).max(),
            # each side's update is Adam's first step on its own gradient (this pins lr, eps, bias correction, sign)
            "adam": max(np.abs(d_ours - _adam_first_step(g_ours)).max(), np.abs(d_ref - _adam_first_step(g_ref)).max())
            / LR,
            "update": (np.abs(d_ours - d_ref) - explained)[signed].max(initial=0.0) / LR,
            "param": (
                (np.abs(ours["after"][path] - theirs["after"][path]) - explained)[signed].max(initial=0.0)
                / np.abs(theirs["after"][path]).max()
            ),
        }
        group = figures[_group(path)]
        for k, e in errors.items():
            group[k] = max(group[k], float(e))
            if e > REL:
                failures.append(f"{path}: {k} error {e:.3g}")
    loss_error = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
    report = (
        f"loss ours {ours['loss']:.7f} torch {theirs['loss']:.7f} (rel {loss_error:.2e}); max error per group: "
        f"grad / its layer's gradient scale; adam: update vs Adam's step on the side's own gradient / lr; "
        f"update: ours vs torch, beyond what the gradients' difference explains / lr; param after the step, "
        f"likewise / the leaf's scale:\n{_report(figures)}"
    )
    print(report)  # shown with pytest -s
    assert loss_error <= 1e-6 and not failures, report + "\n" + "\n".join(failures[:20])
    with_gradient = sum(int((theirs["grad"][p] != 0).sum()) for p in theirs["grad"])
    assert compared > 0.99 * with_gradient, (compared, with_gradient)  # nearly every update met PyTorch's
