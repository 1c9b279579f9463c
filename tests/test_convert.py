"""The converter: PyTorch checkpoint → safetensors → Flax, for every SAM size, and its refusals."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from apps import run_app
from flax import nnx
from optimised import optimised_jit
from segment_anything import sam_model_registry
from torch_reference import assert_close, state_dict_numpy, to_numpy, torch_sam

from sam_jax.config import sam_config
from sam_jax.model import Sam
from sam_jax.model.abstract import abstract
from sam_jax.model.sam import normalize_rgb
from sam_jax.weights.io import assign, load_sam_weights, read_arrays, save_arrays
from sam_jax.weights.params import WeightsError, model_shapes, torch_to_flax

ROOT = Path(__file__).resolve().parents[1]


def _run_converter(*args):
    return run_app("convert/sam_weights.py", *args)


@pytest.mark.slow
def test_vit_b_1024_end_to_end(tmp_path):
    """The real ViT-B shape at 1024 through the command-line converter, against PyTorch SAM."""
    config = sam_config("vit_b")
    ref = torch_sam(config)
    torch.save({"model": ref.state_dict()}, tmp_path / "sam.pth")  # a wrapped state dict, as some releases are
    result = _run_converter("--checkpoint", tmp_path / "sam.pth", "--output", tmp_path / "sam.safetensors")
    assert result.returncode == 0, result.stderr
    arrays, metadata = read_arrays(tmp_path / "sam.safetensors")
    assert metadata["model_type"] == "vit_b" and len(metadata["source_sha256"]) == 64
    assert set(arrays) == set(model_shapes(config))  # every model variable is filled, nothing else is there
    assert sum(a.size for a in arrays.values()) == 93_735_472 + 256  # parameters + the Gaussian buffer

    model = abstract(lambda rngs: Sam(config, rngs=rngs))  # every variable comes from the file
    load_sam_weights(model, tmp_path / "sam.safetensors")
    image = np.random.default_rng(0).uniform(0, 255, (1, 1024, 1024, 3)).astype(np.float32)
    coords = np.array([[[300.0, 600.0], [700.0, 200.0]]], np.float32)
    labels = np.array([[1, 0]], np.int32)
    encoded = []  # the reference's image embedding, kept from its one encoder pass
    ref.image_encoder.register_forward_hook(lambda module, inputs, output: encoded.append(to_numpy(output)))
    with torch.no_grad():
        out = ref(
            [
                {
                    "image": torch.from_numpy(image[0]).permute(2, 0, 1),
                    "original_size": (1024, 1024),
                    "point_coords": torch.from_numpy(coords),
                    "point_labels": torch.from_numpy(labels),
                }
            ],
            multimask_output=True,
        )[0]
    (ref_embedding,) = encoded
    embedding = optimised_jit(lambda m, x: m.encode_image(x))(model, normalize_rgb(jnp.asarray(image)))
    masks, iou = nnx.jit(lambda m, e: m.decode(e, jnp.asarray(coords), jnp.asarray(labels), multimask_output=True))(
        model, embedding
    )
    assert_close(np.moveaxis(np.asarray(embedding), -1, 1), ref_embedding)
    assert_close(masks, to_numpy(out["low_res_logits"]))
    assert_close(iou, to_numpy(out["iou_predictions"]))


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
@pytest.mark.slow
def test_larger_models_map_completely(model_type):
    """Random-shaped ViT-L/H state dicts (built on torch's meta device: no memory) fill every path of our model."""
    with torch.device("meta"):
        ref = sam_model_registry[model_type]()
    state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
    shapes = model_shapes(sam_config(model_type))
    assert set(torch_to_flax(state, shapes)) == set(shapes)


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.slow
def test_other_input_sizes(tmp_path, size):
    """Weights converted at the native size run at another size; reference: PyTorch SAM built at that size, with
    the position tables resized by torch's own F.interpolate."""
    native = sam_config("tiny")
    ref = torch_sam(native)
    state = state_dict_numpy(ref)
    save_arrays(tmp_path / "w.safetensors", torch_to_flax(state, model_shapes(native)), {})

    config = native.replace(image_size=size)
    model = Sam(config, rngs=nnx.Rngs(0))
    load_sam_weights(model, tmp_path / "w.safetensors")

    resized_ref = torch_sam(config)
    g = config.grid_size
    sd = ref.state_dict()
    sd["image_encoder.pos_embed"] = torch.nn.functional.interpolate(
        sd["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(g, g), mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1)
    for i in config.encoder_global_attn_indexes:
        for axis in "hw":
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            sd[key] = torch.nn.functional.interpolate(sd[key].T[None], size=2 * g - 1, mode="linear")[0].T
    resized_ref.load_state_dict(sd)
    image = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = to_numpy(resized_ref.image_encoder(torch.from_numpy(image).permute(0, 3, 1, 2)))
    assert_close(np.moveaxis(np.asarray(model.image_encoder(jnp.asarray(image))), -1, 1), expected)


def test_refuses_incomplete_or_misshapen_state_dicts():
    config = sam_config("tiny")
    state = state_dict_numpy(torch_sam(config))
    shapes = model_shapes(config)
    broken = dict(state)
    del broken["mask_decoder.iou_token.weight"]
    broken["image_encoder.pos_embed"] = broken["image_encoder.pos_embed"][:, :4]
    broken["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError) as e:
        torch_to_flax(broken, shapes)
    message = str(e.value)
    assert "missing 'mask_decoder.iou_token.embedding'" in message
    assert "'image_encoder.pos_embed' has shape (1, 4, 8, 64)" in message
    assert "unexpected key 'extra.weight'" in message


@pytest.mark.slow
def test_cli_refuses_bad_files_without_output(tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    result = _run_converter("--checkpoint", tmp_path / "notes.pth", "--output", tmp_path / "out.safetensors")
    assert result.returncode != 0
    assert "notes.pth" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.safetensors").exists()

    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")  # a checkpoint, but not SAM's
    result = _run_converter("--checkpoint", tmp_path / "other.pth", "--output", tmp_path / "out.safetensors")
    assert result.returncode != 0 and "not a SAM state dict" in result.stderr
    assert list(tmp_path.glob("*.safetensors*")) == []


def test_loading_weights_of_another_size_is_refused(tmp_path):
    save_arrays(
        tmp_path / "l.safetensors",
        {"x": np.zeros(1, np.float32)},
        {"model_type": "vit_l", "encoder_embed_dim": "1024", "encoder_depth": "24"},
    )
    with pytest.raises(WeightsError, match="holds vit_l weights"):
        load_sam_weights(Sam(sam_config("tiny"), rngs=nnx.Rngs(0)), tmp_path / "l.safetensors")


def test_assign_refuses_unknown_paths_and_wrong_shapes_before_writing():
    model = Sam(sam_config("tiny"), rngs=nnx.Rngs(0))
    before = np.asarray(model.mask_decoder.iou_token.embedding[...]).copy()
    good = {"mask_decoder.iou_token.embedding": np.ones_like(before)}
    with pytest.raises(WeightsError, match=r"iou_token.embedding' has shape \(3, 7\), the model needs \(1, 32\)"):
        assign(model, {**good, "mask_decoder.iou_token.embedding": np.ones((3, 7), np.float32)})
    with pytest.raises(WeightsError, match="'no.such.path' is not in the model"):
        assign(model, {**good, "no.such.path": np.ones(2)})
    assert np.array_equal(model.mask_decoder.iou_token.embedding[...], before)  # nothing written on refusal
    assign(model, good)
    assert np.array_equal(model.mask_decoder.iou_token.embedding[...], np.ones_like(before))
