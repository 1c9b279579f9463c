"""What the evaluation apps share: loading a trained run or zero-shot SAM from flags, and printing errors."""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from sam_jax.config import PRESETS
from sam_jax.errors import SamJaxError
from sam_jax.evaluation import EvaluationError, load_trained, load_zero_shot
from sam_jax.evaluation.errors import CheckpointError
from sam_jax.evaluation.trained import ADAPTERS, ZERO_SHOT_INPUTS, ZERO_SHOT_MODALITIES, read_run

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
        list(ZERO_SHOT_INPUTS),
        "Zero-shot only; default: the input the weights expect. sam_rgb: SAM's own (0–255, its RGB statistics); "
        "lite_medsam: LiteMedSAM's (0–255, each slice min–max scaled); raw_crop: the original code's raw "
        "brain-cropped intensities; original_code: those and the original's other inference choices (stretch "
        "resize, (row, col) clicks, clicks broadcast over the volume, its model defects).",
    )
    flags.DEFINE_enum(
        "select",
        "final",
        list(ADAPTERS),
        "Which model of the run: its last step, or its best "
        "validation Dice (adapter_best.safetensors; what the paper reported).",
    )
    flags.DEFINE_integer(
        "batch_size", 8, "Slices per encoder/decoder call (eval.predict's walk encodes one at a time).", lower_bound=1
    )


def check_model_flags(f=flags.FLAGS) -> dict:
    """The model flags checked without building the model, so that a mistake is named at once rather than after
    seconds of loading; returns the run's training settings (config.json; empty for zero-shot SAM)."""
    if f.zero_shot:
        if not f.sam_weights:
            raise EvaluationError("--zero_shot needs --sam_weights (converted SAM weights)")
        if not Path(f.sam_weights).is_file():
            raise CheckpointError(f"--sam_weights {f.sam_weights}: no such file")
        return {}
    if not f.checkpoint:
        raise EvaluationError("--checkpoint WORKDIR is required (or --zero_shot with --sam_weights)")
    if not Path(f.checkpoint).is_dir():
        raise CheckpointError(f"--checkpoint {f.checkpoint}: no such folder (expected a training workdir)")
    return read_run(f.checkpoint, ADAPTERS[f.select])[1]


def load_model(f=flags.FLAGS):
    check_model_flags(f)
    if f.zero_shot:
        return load_zero_shot(f.sam_weights, f.model_type, f.image_size, f.modalities, f.zero_shot_input)
    return load_trained(f.checkpoint, f.sam_weights, f.select)


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
