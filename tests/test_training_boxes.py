"""Box prompts in training: the step decodes each slice as SAM would decode it alone (its box, its click beside it
with `both`, nothing where the slice has no box), and `train.main --prompt=box` trains and records the prompt."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from apps import config_flags, run_app
from flax import nnx

from sam_jax.model.frame import to_model_frame
from sam_jax.training.config import TrainConfig
from sam_jax.training.step import forward, initial_model
from sam_jax.weights.io import read_arrays


@pytest.mark.slow  # a tiny model built: ~10 s on 2 cores
@pytest.mark.parametrize("prompt", ["box", "both"])
def test_each_slice_is_decoded_from_its_own_prompts(prompt):
    cfg = TrainConfig(data_dir="d", model_type="tiny", image_size=64, modalities="t1n_t2w_t2f", prompt=prompt)
    model = initial_model(cfg)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, 1, 40, 40, 3)).astype(np.float32),
        "mask": np.zeros((2, 1, 40, 40), np.uint8),
        "valid_hw": np.array([[40, 32], [25, 40]], np.int32),
        "point_coords": np.array([[[[12.0, 7.0]]], [[[30.0, 3.0]]]], np.float32),
        "point_labels": np.array([[[1]], [[0]]], np.int32),
        "boxes": np.array([[[5.0, 6.0, 20.0, 30.0]], [[0.0, 0.0, 0.0, 0.0]]], np.float32),
        "has_box": np.array([[True], [False]]),
    }
    graphdef, state = nnx.split(model)
    logits, iou, _ = jax.jit(lambda st, b: forward(nnx.merge(graphdef, st), b, jax.random.key(0), cfg))(state, batch)

    @jax.jit
    def alone(st):  # each slice decoded by itself, in the model frame by hand
        model = nnx.merge(graphdef, st)
        images, _ = to_model_frame(jnp.asarray(batch["image"][:, 0]), jnp.asarray(batch["valid_hw"]), 64)
        embeddings = model.encode_image(images)
        scale = 64 / 40  # longest side 40 → 64, both slices
        box = jnp.asarray(batch["boxes"][0, 0][None] * scale)
        clicks = [jnp.asarray(batch["point_coords"][i, 0][None] * scale) for i in range(2)]
        labels = [jnp.asarray(batch["point_labels"][i, 0][None]) for i in range(2)]
        click_alone = model.decode(embeddings[:1], clicks[0], labels[0])
        if prompt == "box":  # the box alone; the slice without one gets no prompt at all
            return [model.decode(embeddings[:1], boxes=box), model.decode(embeddings[1:])], click_alone
        # the click beside the box; the slice without a box its click alone
        return [
            model.decode(embeddings[:1], clicks[0], labels[0], box),
            model.decode(embeddings[1:], clicks[1], labels[1]),
        ], click_alone

    alone, click_alone = alone(state)
    np.testing.assert_allclose(logits, np.concatenate([a[0] for a in alone]), atol=1e-5)
    np.testing.assert_allclose(iou, np.concatenate([a[1] for a in alone]), atol=1e-5)
    assert not np.allclose(alone[0][0], click_alone[0], atol=1e-3)  # the box counts


def test_unknown_prompt_is_refused_by_the_config():
    with pytest.raises(ValueError, match="prompt 'boxes': expected one of click, box, both"):
        TrainConfig(data_dir="d", prompt="boxes")


@pytest.mark.slow
def test_train_main_with_box_prompts(tiny_config, tmp_path):
    workdir = tmp_path / "box_run"
    flags = config_flags(tiny_config, slice_policy="tumour_plus", empty_fraction=0.5)  # some slices without a box
    result = run_app("-m", "train.main", *flags, f"--workdir={workdir}", "--steps=2", "--prompt=box")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in lines)
    assert json.loads((workdir / "config.json").read_text())["prompt"] == "box"
    _, header = read_arrays(workdir / "adapter.safetensors")
    assert json.loads(header["run_spec"])["prompt"] == "box"  # what evaluation rebuilds the run from
    summary = json.loads((workdir / "summary.json").read_text())  # scored from tight boxes
    assert summary["steps"] == 2 and len(summary["paper_dice"]) == 1  # the one domain with held-out cases
    assert all(np.isfinite(v) for v in summary["paper_dice"].values())
