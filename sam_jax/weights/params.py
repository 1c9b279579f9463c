"""PyTorch SAM state dict → our Flax parameter tree: the one table of renames and transposes.

Our module attributes carry the PyTorch names (SAM's, and TinyViT's for LiteMedSAM and MobileSAM), so a key changes
only in its leaf (`weight` becomes `kernel`, `scale` or `embedding`) and a kernel's layout is permuted. Every model
path must be filled and every checkpoint key used (batch-norm running statistics and counters included); a shape
that does not fit is an error. Nothing is ever left at its initial value.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping

import numpy as np

from sam_jax.config import PRESETS, SamConfig
from sam_jax.errors import SamJaxError

TORCH_LINEAR_TO_FLAX = (1, 0)  # (out, in) → (in, out)
TORCH_CONV2D_TO_FLAX = (2, 3, 1, 0)  # (out, in, kh, kw) → (kh, kw, in, out)
TORCH_CONV_TRANSPOSE2D_TO_FLAX = (2, 3, 0, 1)  # (in, out, kh, kw) → (kh, kw, in, out), see _conv_transpose

_EMBEDDINGS = r"point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|mask_tokens"
_NORMS = r"norm\d?|norm_final_attn|neck\.[13]|mask_downscaling\.[14]|output_upscaling\.1|bn"  # bn: TinyViT's
_CONVS = r"patch_embed\.proj|neck\.[02]|mask_downscaling\.[036]|c"  # c: the convolution of TinyViT's Conv2d_BN
_CONV_TRANSPOSES = r"output_upscaling\.[03]"


def _conv_transpose(w):
    # Flax's ConvTranspose (transpose_kernel=False) correlates the dilated input, so PyTorch's kernel is also
    # flipped in space. Pinned by tests/test_parity.py::test_mask_decoder.
    return np.transpose(w, TORCH_CONV_TRANSPOSE2D_TO_FLAX)[::-1, ::-1]


# (regex over the PyTorch key, replacement giving our path, transform of the array). First match wins.
CONVERSION_RULES = (
    (rf"^(.*\.(?:{_CONV_TRANSPOSES}))\.weight$", r"\1.kernel", _conv_transpose),
    (rf"^(.*\.(?:{_EMBEDDINGS}))\.weight$", r"\1.embedding", None),
    (rf"^(.*\.(?:{_NORMS}))\.weight$", r"\1.scale", None),
    (rf"^(.*\.(?:{_CONVS}))\.weight$", r"\1.kernel", lambda w: np.transpose(w, TORCH_CONV2D_TO_FLAX)),
    (r"^(.*)\.weight$", r"\1.kernel", lambda w: np.transpose(w, TORCH_LINEAR_TO_FLAX)),  # every other weight: Linear
    (r"^(.*)$", r"\1", None),  # biases, pos_embed, rel_pos_h/w, the prompt encoder's Gaussian matrix
)

# Not parameters, not in SAM's checkpoints; tolerated if a state dict carries them.
IGNORED_KEYS = {"pixel_mean", "pixel_std"}


class WeightsError(SamJaxError, ValueError):
    """A checkpoint or converted weights file does not fit the model."""


def summarise_problems(problems, shown: int = 8) -> str:
    """The first `shown` problems joined, and how many more there are."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


def flax_path(torch_key: str) -> str:
    for pattern, replacement, _ in CONVERSION_RULES:
        if re.match(pattern, torch_key):
            return re.sub(pattern, replacement, torch_key)
    raise AssertionError("the last rule matches every key")


def convert_array(torch_key: str, array: np.ndarray) -> np.ndarray:
    for pattern, _, transform in CONVERSION_RULES:
        if re.match(pattern, torch_key):
            return transform(array) if transform else array  # a view; made contiguous when saved
    raise AssertionError("the last rule matches every key")


_VIT_STEM = "image_encoder.patch_embed.proj.weight"
_TINY_VIT_STEM = "image_encoder.patch_embed.seq.0.c.weight"


def _blocks(state_dict, prefix: str) -> int:
    """How many numbered blocks `prefix<i>.` the state dict holds."""
    return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})


def _encoder_identity(state_dict: Mapping[str, np.ndarray]) -> Dict[str, str]:
    """`SamConfig.encoder_identity` as the checkpoint's shapes give it."""
    if _VIT_STEM in state_dict:
        width = state_dict[_VIT_STEM].shape[0]
        depth = _blocks(state_dict, "image_encoder.blocks.")
        return {"image_encoder": "vit", "encoder_embed_dim": str(width), "encoder_depth": str(depth)}
    # TinyViT: a 1×1 stem convolution runs at full resolution (patch 4), a 3×3 one at stride 2 (patch 16).
    stages = _blocks(state_dict, "image_encoder.layers.")
    widths = [state_dict["image_encoder.patch_embed.seq.2.c.weight"].shape[0]] + [
        state_dict[f"image_encoder.layers.{i}.downsample.conv1.c.weight"].shape[0] for i in range(stages - 1)
    ]
    depths = [_blocks(state_dict, f"image_encoder.layers.{i}.blocks.") for i in range(stages)]
    return {
        "image_encoder": "tiny_vit",
        "patch_size": "4" if state_dict[_TINY_VIT_STEM].shape[-1] == 1 else "16",
        "tiny_vit_embed_dims": ",".join(map(str, widths)),
        "tiny_vit_depths": ",".join(map(str, depths)),
    }


def describe_encoder(identity: Mapping[str, str]) -> str:
    """An `encoder_identity` in words, for messages."""
    get = lambda key: identity.get(key, "?")  # noqa: E731
    if get("image_encoder") == "vit":
        return f"width {get('encoder_embed_dim')} and depth {get('encoder_depth')}"
    return (
        f"a {get('image_encoder')} encoder of widths {get('tiny_vit_embed_dims')}, depths {get('tiny_vit_depths')} "
        f"and patch size {get('patch_size')}"
    )


def detect_model_type(state_dict: Mapping[str, np.ndarray]) -> str:
    """The preset from the image encoder's shapes: for SAM's ViT (vit_b, vit_l, vit_h, or a small one: tiny, demo)
    the patch embedding's width and the number of blocks; for a TinyViT (lite_medsam, mobile_sam) its stage widths
    and depths and its stem."""
    if _VIT_STEM not in state_dict and _TINY_VIT_STEM not in state_dict:
        raise WeightsError(
            f"not a SAM state dict: it has neither {_VIT_STEM!r} nor {_TINY_VIT_STEM!r} "
            f"(keys start with {sorted(state_dict)[:3]})"
        )
    try:
        identity = _encoder_identity(state_dict)
    except KeyError as e:
        raise WeightsError(f"not a SAM state dict: its TinyViT encoder has no {e.args[0]!r}") from None
    for name, c in PRESETS.items():
        if c.encoder_identity() == identity:
            return name
    raise WeightsError(f"no SAM model has an encoder of {describe_encoder(identity)}")


def torch_to_flax(state_dict: Mapping[str, np.ndarray], expected_shapes: Mapping[str, tuple]) -> Dict[str, np.ndarray]:
    """Map a PyTorch SAM state dict onto our paths, checking it fills `expected_shapes` exactly.

    `expected_shapes`: our dot-joined path → shape, for every variable of the model (see `model_shapes`).
    """
    converted, problems = {}, []
    for key, array in state_dict.items():
        if key in IGNORED_KEYS:
            continue
        path = flax_path(key)
        if path not in expected_shapes:
            problems.append(f"unexpected key {key!r}")
            continue
        value = convert_array(key, np.asarray(array))
        if value.shape != tuple(expected_shapes[path]):
            problems.append(
                f"{key!r} has shape {tuple(np.shape(array))}, the model needs "
                f"{tuple(expected_shapes[path])} (as {path})"
            )
            continue
        converted[path] = value
    missing = sorted(set(expected_shapes) - {flax_path(k) for k in state_dict})
    problems += [f"missing {p!r}" for p in missing]
    if problems:
        raise WeightsError(f"the state dict does not fit the model: {summarise_problems(problems)}")
    return converted


def model_shapes(config: SamConfig) -> Dict[str, tuple]:
    """Our dot-joined path → shape for every variable of a model built from `config`, without allocating it."""
    from flax import nnx

    from sam_jax.model import Sam
    from sam_jax.model.abstract import abstract

    structure = abstract(lambda rngs: Sam(config, rngs=rngs))
    return {".".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(structure))}
