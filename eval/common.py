"""What the evaluation apps share: loading a trained run or zero-shot SAM from flags, and printing errors."""

from __future__ import annotations

import sys

from absl import flags

from sam_jax.config import PRESETS
from sam_jax.errors import SamJaxError
from sam_jax.evaluation import EvaluationError, load_trained, load_zero_shot
from sam_jax.evaluation.trained import ADAPTERS, ZERO_SHOT_MODALITIES

EXPECTED_ERRORS = SamJaxError  # every fault in the user's input; anything else is a bug and keeps its traceback


def define_model_flags():
    flags.DEFINE_string("checkpoint", "", "Training workdir (config.json + adapter.safetensors).")
    flags.DEFINE_string(
        "sam_weights",
        None,
        "Converted SAM weights; overrides the path in config.json, and is the model itself with --zero_shot.",
    )
    flags.DEFINE_bool("zero_shot", False, "Plain SAM, no adapter (Table 1): needs --sam_weights.")
    flags.DEFINE_enum(
        "model_type", "auto", ["auto", *PRESETS], "Zero-shot only: SAM size; auto: the one the weights file holds."
    )
    flags.DEFINE_integer(
        "image_size",
        0,
        "Zero-shot only: model input size; 0: the model's own (SAM 1024, LiteMedSAM 256).",
        lower_bound=0,
    )
    flags.DEFINE_string(
        "modalities", ZERO_SHOT_MODALITIES, "Zero-shot only: a 3-channel layout (t1n_t2w_t2f, t2f_x3, …)."
    )
    flags.DEFINE_enum(
        "zero_shot_input",
        None,
        ["sam_rgb", "lite_medsam", "raw_crop"],
        "Zero-shot only; default: the input the weights expect. sam_rgb: SAM's own (0–255, its RGB statistics); "
        "lite_medsam: LiteMedSAM's (0–255, each slice min–max scaled); raw_crop: the original code's raw "
        "brain-cropped intensities.",
    )
    flags.DEFINE_enum(
        "select",
        "final",
        list(ADAPTERS),
        "Which model of the run: its last step, or its best "
        "validation Dice (adapter_best.safetensors; what the paper reported).",
    )
    flags.DEFINE_integer("batch_size", 8, "Slices per encoder/decoder call.", lower_bound=1)


def load_model(f=flags.FLAGS):
    if f.zero_shot:
        if not f.sam_weights:
            raise EvaluationError("--zero_shot needs --sam_weights (converted SAM weights)")
        raw = f.zero_shot_input == "raw_crop"
        return load_zero_shot(
            f.sam_weights,
            f.model_type,
            f.image_size,
            f.modalities,
            normalisation="none" if raw else f.zero_shot_input or "",
            crop_to_brain=raw,
        )
    if not f.checkpoint:
        raise EvaluationError("--checkpoint WORKDIR is required (or --zero_shot with --sam_weights)")
    return load_trained(f.checkpoint, f.sam_weights, f.select)


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
