"""Load a trained run (its adapter file, whose header holds the run spec) or plain SAM for zero-shot, as one model.

A random-init run rebuilds its base from the seed it was trained with (`random-init-seed-<seed>`); `build_model`
draws parameters from `nnx.Rngs(seed)` in a fixed order, so the same seed gives the same base bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from flax import nnx

from sam_jax.adaptation import build_model, load_adapter
from sam_jax.adaptation.modalities import LAYOUTS
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


def load_zero_shot(
    sam_weights: str,
    model_type: str = "auto",
    image_size: int = 0,
    modalities: str = ZERO_SHOT_MODALITIES,
    normalisation: str = "",
    crop_to_brain: bool = False,
) -> TrainedModel:
    """Plain SAM (or LiteMedSAM) on a 3-channel layout of the modalities (Table 1's zero-shot row); `auto`: the model
    the converted file says it holds; `image_size` 0: the model's own (1024 for SAM, 256 for LiteMedSAM). The input
    its weights expect by default (`SamConfig.pretrained_input`: `sam_rgb` for SAM, `lite_medsam`); the original
    code fed SAM the training pipeline's raw, brain-cropped intensities (`normalisation="none", crop_to_brain=True`)."""
    if not Path(sam_weights).is_file():
        raise CheckpointError(f"--sam_weights {sam_weights}: no such file")
    try:
        if model_type == "auto":
            model_type = read_metadata(sam_weights).get("model_type", "")
            if not model_type:
                raise CheckpointError(f"{sam_weights}: its header names no model type; pass --model_type")
        own = PRESETS.get(model_type, SamConfig())  # an unknown type is named by the spec below
        image_size = image_size or own.image_size
        normalisation = normalisation or own.pretrained_input
        spec = RunSpec(
            model_type=model_type,
            image_size=image_size,
            sam_weights=sam_weights,
            modalities=modalities,
            lora_rank=0,
            trainable="none",
            normalisation=normalisation,
            crop_to_brain=crop_to_brain,
        ).with_base_identity()
        model = build_model(spec.sam_config(), spec, sam_weights=sam_weights, rngs=nnx.Rngs(0))
    except SamJaxError as e:
        raise CheckpointError(f"zero-shot SAM from {sam_weights}: {e}") from None
    layout = next((name for name, chans in LAYOUTS.items() if chans == spec.modalities), "_".join(spec.modalities))
    size = "" if image_size == own.image_size else f"_{image_size}"
    raw = "" if normalisation == own.pretrained_input else f"_{normalisation}{'_crop' if crop_to_brain else ''}"
    return TrainedModel(model, spec, name=f"sam_{model_type}_zero_shot_{layout}{size}{raw}")
