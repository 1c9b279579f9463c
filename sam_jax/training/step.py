"""The jitted training step in Flax's functional split/merge form.

`nnx.split` gives (graphdef, trainable, frozen); the step differentiates the loss with respect to `trainable` only,
donates `trainable` and the optimiser state (they are replaced every step) and reuses `frozen`, which stays on the
device and is never re-sent. Everything from the host slice to the loss happens inside: resize to the model frame,
click and box scaling, the iterative prompt rounds, the decoder.

`build_train_step` assembles a run's step and the state it starts from; the training loop, the benchmarks and the
parity test all take their step from it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sam_jax.adaptation import build_model, partition
from sam_jax.data.boxes import boxes_to_model_frame
from sam_jax.model.frame import (
    clicks_to_model_frame,
    input_grid_target,
    original_code_prompts,
    target_to_low_res,
    to_model_frame,
)
from sam_jax.training.losses import mask_loss, multimask_loss
from sam_jax.training.prompts import click_in_error


def flatten_slices(batch):
    """(B, Z, …) sample stacks → (B·Z, …) slices; valid_hw repeated per slice."""
    b, z = batch["image"].shape[:2]
    stacked = ("image", "mask", "point_coords", "point_labels", "boxes", "has_box")
    flat = {k: batch[k].reshape((b * z,) + batch[k].shape[2:]) for k in stacked if k in batch}
    flat["valid_hw"] = jnp.repeat(batch["valid_hw"], z, axis=0)
    return flat, z


def decode_prompts(model, embeddings, coords, labels, mask_input=None, multimask=False, *, boxes=None, has_box=None):
    """`model.decode` of clicks (or None) and, on the rows where `has_box` (N,) holds, `boxes` (N, 4) in the model
    frame. A row without a box gets its clicks alone (SAM's padding point appended), or no prompt at all, as SAM
    would decode that slice by itself: both forms are decoded and chosen per row (the decoder costs little beside
    the encoder)."""
    if boxes is None:
        return model.decode(embeddings, coords, labels, mask_inputs=mask_input, multimask_output=multimask)
    boxed = model.decode(embeddings, coords, labels, boxes, mask_input, multimask)
    bare = model.decode(embeddings, coords, labels, None, mask_input, multimask)
    pick = lambda a, b: jnp.where(has_box.reshape(has_box.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
    return jax.tree.map(pick, boxed, bare)


def forward(model, batch, rng, cfg):
    """Low-res logits (N, M, h, w), IoU predictions and soft targets (N, h, w) for a batch of sample stacks.

    `cfg`: the run's `TrainConfig` (its input size, resize rule, precision, prompt kind, click order and broadcast,
    prompt rounds and multimask are read). With box prompts the batch carries `boxes` and `has_box`; `box` drops
    the clicks, `both` keeps them beside the box."""
    flat, z = flatten_slices(batch)
    dtype = jnp.dtype(cfg.precision)
    sam = model.config  # the model knows its input scaling and its decoder's grid
    images, scale = to_model_frame(flat["image"], flat["valid_hw"], cfg.image_size, cfg.resize, sam.frame_min_max)
    target = target_to_low_res(flat["mask"], flat["valid_hw"], cfg.image_size, cfg.resize, low_res=sam.mask_input_size)
    embeddings = model.encode_image(images.astype(dtype), slices=z)
    coords, labels = original_code_prompts(
        clicks_to_model_frame(flat["point_coords"], scale),
        flat["point_labels"],
        click_order=cfg.click_order,
        broadcast=cfg.broadcast_clicks,
    )
    boxes = has_box = None
    if cfg.prompt != "click":
        boxes, has_box = boxes_to_model_frame(flat["boxes"], scale), flat["has_box"]
    if cfg.prompt == "box":
        coords = labels = None
    mask_input = None
    for round_rng in jax.random.split(rng, cfg.prompt_rounds - 1):
        logits, _ = decode_prompts(model, embeddings, coords, labels, mask_input, boxes=boxes, has_box=has_box)
        logits = jax.lax.stop_gradient(logits[:, 0].astype(jnp.float32))
        new_coords, new_labels = click_in_error(round_rng, logits, target, cfg.image_size)
        coords = new_coords if coords is None else jnp.concatenate([coords, new_coords], axis=1)
        labels = new_labels if labels is None else jnp.concatenate([labels, new_labels], axis=1)
        mask_input = logits[..., None].astype(dtype)
    logits, iou = decode_prompts(
        model, embeddings, coords, labels, mask_input, cfg.multimask, boxes=boxes, has_box=has_box
    )
    return logits.astype(jnp.float32), iou.astype(jnp.float32), target


def compute_loss(model, batch, rng, cfg):
    logits, _, target = forward(model, batch, rng, cfg)
    if cfg.loss_grid == "input":  # the original code: logits up to the input by nearest, against the mask there
        flat, _ = flatten_slices(batch)
        target = input_grid_target(flat["mask"], flat["valid_hw"], cfg.image_size, cfg.resize)
        factor = cfg.image_size // logits.shape[-1]  # 4 for SAM; 1 for LiteMedSAM, whose logits are the input's size
        logits = logits.repeat(factor, axis=-2).repeat(factor, axis=-1)
    if cfg.multimask:
        return multimask_loss(cfg.loss, logits, target).mean()
    return mask_loss(cfg.loss, logits[:, 0], target).mean()


def cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, cfg):
    """step(trainable, opt_state, frozen, batch, rng) → (trainable, opt_state, metrics), jitted with donation;
    `cfg`: the run's `TrainConfig`."""
    dtype = jnp.dtype(cfg.precision)

    def loss_fn(trainable, frozen, batch, rng):
        model = nnx.merge(graphdef, cast_floats(trainable, dtype), cast_floats(frozen, dtype))
        return compute_loss(model, batch, rng, cfg)

    def step(trainable, opt_state, frozen, batch, rng):
        value, grads = jax.value_and_grad(loss_fn)(trainable, frozen, batch, rng)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=(0, 1))


def optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """The run's optimiser (`cfg`: its `TrainConfig`); a cosine schedule decays over `total_steps`."""
    if cfg.schedule == "constant":
        lr = cfg.learning_rate
    elif cfg.warmup_steps == 0:  # optax's warm-up of 0 steps logs a "constant schedule" that reads as lr 0
        lr = optax.cosine_decay_schedule(cfg.learning_rate, max(total_steps, 1))
    else:
        lr = optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1)
        )
    return optax.adamw(lr, weight_decay=cfg.weight_decay) if cfg.weight_decay else optax.adam(lr)


def initial_model(cfg) -> nnx.Module:
    """The adapted model a run starts from: SAM's weights from `cfg.sam_weights`, or a random initialisation from
    `cfg.seed` when it is empty."""
    return build_model(cfg.sam_config(), cfg, sam_weights=cfg.sam_weights or None, rngs=nnx.Rngs(cfg.seed))


class TrainStep(NamedTuple):
    """A jitted step and the state it starts from: `step(trainable, opt_state, frozen, batch, rng)` →
    (trainable, opt_state, metrics); `frozen` is already in the compute dtype."""

    step: Callable
    graphdef: nnx.GraphDef
    trainable: nnx.State
    opt_state: Any
    frozen: nnx.State


def build_train_step(cfg, model: nnx.Module | None = None, tx: optax.GradientTransformation | None = None) -> TrainStep:
    """The train step of `cfg` (a `TrainConfig`) on `model` (default `initial_model(cfg)`), split by
    `cfg.trainable`, with `tx` (default the run's `optimizer` over `cfg.steps`) initialised on the trainable part.
    Nothing is placed on devices: the caller places `frozen` once (replicated, in the loop)."""
    model = initial_model(cfg) if model is None else model
    tx = optimizer(cfg, cfg.steps) if tx is None else tx
    graphdef, trainable, frozen = partition(model, cfg.trainable)
    return TrainStep(
        make_train_step(graphdef, tx, cfg),
        graphdef,
        trainable,
        tx.init(trainable),
        cast_floats(frozen, jnp.dtype(cfg.precision)),
    )


def make_eval_forward(graphdef, cfg):
    """forward(params..., batch, rng) → (logits, iou, target), jitted, for validation and evaluation."""

    def run(trainable, frozen, batch, rng):
        model = nnx.merge(graphdef, trainable, frozen)
        return forward(model, batch, rng, cfg)

    return jax.jit(run)
