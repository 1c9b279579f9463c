"""Load a trained run (its adapter file, whose header holds the run spec) or plain SAM for zero-shot, as one model.

A random-init run rebuilds its base from the seed it was trained with (`random-init-seed-<seed>`); `build_model`
draws parameters from `nnx.Rngs(seed)` in a fixed order, so the same seed gives the same base bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from flax import nnx

from sam_jax.adaptation import build_model, load_adapter
from sam_jax.adaptation.modalities import LAYOUTS, MODALITIES
from sam_jax.config import PRESETS, SamConfig
from sam_jax.errors import SamJaxError
from sam_jax.evaluation.errors import CheckpointError
from sam_jax.model import Sam
from sam_jax.spec import METADATA_KEY, RunSpec
from sam_jax.weights.io import read_metadata

ZERO_SHOT_MODALITIES = "t1n_t2w_t2f"  # SAM's RGB slots take T1, T2, FLAIR (docs/reference.md §4)
ADAPTERS = {"final": "adapter.safetensors", "best": "adapter_best.safetensors"}  # --select: which model of a run


@dataclasses.dataclass
class TrainedModel:
    """A model ready for inference, the spec its inputs follow, and how it was trained (the run directory's
    config.json as recorded: data_dir, domain, prompt_rounds…; empty for zero-shot SAM)."""

    model: Sam
    spec: RunSpec
    name: str
    training: dict = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.spec.image_size


def read_run(workdir, adapter: str = ADAPTERS["final"]) -> tuple[RunSpec, dict]:
    """What a run directory records: its run spec, from the adapter's header (from config.json for adapters written
    before headers held it, or a run without an adapter), and its training settings, config.json as written (empty
    for an adapter alone). The spec is as recorded: an old run's base-weights identity may be empty."""
    workdir = Path(workdir)
    config, adapter = workdir / "config.json", workdir / adapter
    try:
        training = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config}: unreadable ({e}); is {workdir} a training workdir?") from None
    try:
        metadata = read_metadata(adapter) if adapter.is_file() else {}
        if METADATA_KEY in metadata:
            return RunSpec.from_metadata(metadata, str(adapter)), training
        if not training:
            raise CheckpointError(f"{workdir}: neither a run spec in {adapter.name} nor a config.json")
        return RunSpec.from_dict(training, str(config)), training
    except SamJaxError as e:
        raise CheckpointError(str(e)) from None


def load_trained(workdir, sam_weights: str | None = None, select: str = "final") -> TrainedModel:
    """The model trained in `workdir`: its last step (`final`) or its best validation Dice (`best`, what the paper
    reported); `sam_weights` overrides the base weights path the run recorded."""
    workdir = Path(workdir)
    if select not in ADAPTERS:
        raise CheckpointError(f"--select {select}: expected one of {', '.join(ADAPTERS)}")
    adapter = workdir / ADAPTERS[select]
    if not adapter.is_file():
        if select == "best" and (workdir / ADAPTERS["final"]).is_file():
            raise CheckpointError(
                f"{adapter}: no such file; the run had no validation split for its domain, so it "
                f"has no best checkpoint: use --select final"
            )
        raise CheckpointError(
            f"{adapter}: no such file; is {workdir} a finished training workdir? (training "
            f"writes it at the end of a run)"
        )
    spec, training = read_run(workdir, ADAPTERS[select])
    if sam_weights is not None:
        spec = spec.replace(sam_weights=sam_weights)
    if spec.sam_weights and not Path(spec.sam_weights).is_file():
        raise CheckpointError(
            f"{adapter} was trained on SAM weights {spec.sam_weights}, which do not exist; "
            f"pass --sam_weights with their new path"
        )
    try:
        spec = spec if spec.base_sha256 else spec.with_base_identity()
        model = build_model(spec.sam_config(), spec, sam_weights=spec.sam_weights or None, rngs=nnx.Rngs(spec.seed))
        load_adapter(model, adapter, spec, spec.base_sha256)
    except SamJaxError as e:
        raise CheckpointError(f"{workdir}: the adapter does not fit its run spec: {e}") from None
    return TrainedModel(model, spec, workdir.name if select == "final" else f"{workdir.name}_{select}", training)


# What zero-shot SAM is fed (eval --zero_shot_input), as run-spec settings, and the suffix its name carries.
# original_code: every choice of the original code that acts at inference (train/paper_code/adult.flags; the loss
# grid and the volume batch act only in training): its raw brain-cropped input, stretch resize, (row, col) clicks,
# each slice prompted with every slice's click, and its model defects.
# A model's own input (`SamConfig.pretrained_input`: sam_rgb for SAM, lite_medsam for LiteMedSAM) is the default
# and adds no suffix.
ZERO_SHOT_INPUTS = {
    "sam_rgb": ({"normalisation": "sam_rgb"}, ""),
    "lite_medsam": ({"normalisation": "lite_medsam"}, ""),
    "raw_crop": ({"normalisation": "none", "crop_to_brain": True}, "_none_crop"),
    "original_code": (
        {
            "normalisation": "none",
            "crop_to_brain": True,
            "resize": "stretch",
            "click_order": "row_col",
            "broadcast_clicks": True,
            "zero_rel_pos": True,
            "random_decoder_mlps": True,
            "decoder_first_residual": True,
        },
        "_original_code",
    ),
}
_ZERO_SHOT_NAME = re.compile(
    r"sam_(?P<model_type>.+?)_zero_shot_(?P<layout>.+?)(?:_(?P<size>\d+))?"
    r"(?P<input>" + "|".join(suffix for _, suffix in ZERO_SHOT_INPUTS.values() if suffix) + r")?"
)


def _own(model_type: str) -> SamConfig:
    """The preset's config: its input size and the input its weights expect (SAM's for an unknown type)."""
    return PRESETS.get(model_type, SamConfig())


def zero_shot_name(model_type: str, modalities, image_size: int, zero_shot_input: str) -> str:
    """`sam_<size>_zero_shot_<layout>[_<input size>][<input suffix>]`: what `parse_zero_shot_name` reads back; the
    model's own input size and input add nothing."""
    layout = next((name for name, chans in LAYOUTS.items() if chans == tuple(modalities)), "_".join(modalities))
    size = "" if image_size == _own(model_type).image_size else f"_{image_size}"
    return f"sam_{model_type}_zero_shot_{layout}{size}{ZERO_SHOT_INPUTS[zero_shot_input][1]}"


def parse_zero_shot_name(name: str) -> dict | None:
    """{model_type, modalities, image_size, zero_shot_input} of a name `zero_shot_name` made; None for another."""
    found = _ZERO_SHOT_NAME.fullmatch(name)
    if not found:
        return None
    layout = found["layout"]
    if layout in LAYOUTS:
        modalities = LAYOUTS[layout]
    elif all(m in MODALITIES for m in layout.split("_")):
        modalities = tuple(layout.split("_"))
    else:
        return None
    own = _own(found["model_type"])
    zero_shot_input = next(
        (key for key, (_, suffix) in ZERO_SHOT_INPUTS.items() if suffix and suffix == found["input"]),
        own.pretrained_input,
    )
    return dict(
        model_type=found["model_type"],
        modalities=modalities,
        image_size=int(found["size"] or own.image_size),
        zero_shot_input=zero_shot_input,
    )


def load_zero_shot(
    sam_weights: str,
    model_type: str = "auto",
    image_size: int = 0,
    modalities: str = ZERO_SHOT_MODALITIES,
    zero_shot_input: str | None = None,
) -> TrainedModel:
    """Plain SAM (or LiteMedSAM) on a 3-channel layout of the modalities (Table 1's zero-shot row); `auto`: the model
    the converted file says it holds; `image_size` 0: the model's own (1024 for SAM, 256 for LiteMedSAM). The input
    its weights expect by default (`SamConfig.pretrained_input`); `raw_crop`: the training pipeline's raw,
    brain-cropped intensities, as the original code fed SAM; `original_code`: that and the original's other
    inference choices (`ZERO_SHOT_INPUTS`)."""
    if zero_shot_input is not None and zero_shot_input not in ZERO_SHOT_INPUTS:
        raise CheckpointError(f"zero-shot input {zero_shot_input!r}: expected one of {', '.join(ZERO_SHOT_INPUTS)}")
    if not Path(sam_weights).is_file():
        raise CheckpointError(f"--sam_weights {sam_weights}: no such file")
    try:
        if model_type == "auto":
            model_type = read_metadata(sam_weights).get("model_type", "")
            if not model_type:
                raise CheckpointError(f"{sam_weights}: its header names no model type; pass --model_type")
        own = _own(model_type)  # an unknown type is named by the spec below
        image_size = image_size or own.image_size
        zero_shot_input = zero_shot_input or own.pretrained_input
        spec = RunSpec(
            model_type=model_type,
            image_size=image_size,
            sam_weights=sam_weights,
            modalities=modalities,
            lora_rank=0,
            trainable="none",
            **ZERO_SHOT_INPUTS[zero_shot_input][0],
        ).with_base_identity()
        model = build_model(spec.sam_config(), spec, sam_weights=sam_weights, rngs=nnx.Rngs(0))
    except SamJaxError as e:
        raise CheckpointError(f"zero-shot SAM from {sam_weights}: {e}") from None
    name = zero_shot_name(model_type, spec.modalities, image_size, zero_shot_input)
    return TrainedModel(model, spec, name=name)
