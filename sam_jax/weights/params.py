"""PyTorch SAM state dict → our Flax parameter tree: the one table of renames and transposes.

Our module attributes carry SAM's names, so a key changes only in its leaf (`weight` becomes `kernel`, `scale` or
`embedding`) and a kernel's layout is permuted. Every model path must be filled and every checkpoint key used; a
shape that does not fit is an error. Nothing is ever left at its initial value.
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
_NORMS = r"norm\d?|norm_final_attn|neck\.[13]|mask_downscaling\.[14]|output_upscaling\.1"
_CONVS = r"patch_embed\.proj|neck\.[02]|mask_downscaling\.[036]"
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


def detect_model_type(state_dict: Mapping[str, np.ndarray]) -> str:
    """The preset (vit_b, vit_l, vit_h, or a small one: tiny, demo) from the patch embedding's width and the number
    of encoder blocks."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state_dict:
        raise WeightsError(f"not a SAM state dict: it has no {key!r} (keys start with {sorted(state_dict)[:3]})")
    width = state_dict[key].shape[0]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, c in PRESETS.items():
        if (c.encoder_embed_dim, c.encoder_depth) == (width, depth):
            return name
    raise WeightsError(f"no SAM model has an encoder of width {width} and depth {depth}")


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

    abstract = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))
    return {".".join(map(str, path)): tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract))}
