"""Load a trained run (its workdir's config.json + adapter.safetensors) or plain SAM for zero-shot, as one model.

A random-init run rebuilds its base from the seed it was trained with (`random-init-seed-<seed>`); `build_model`
draws parameters from `nnx.Rngs(seed)` in a fixed order, so the same seed gives the same base bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from sam_jax.adaptation import AdaptationConfig, AdaptationError, build_model, load_adapter
from sam_jax.adaptation.modalities import LAYOUTS
from sam_jax.model import Sam
from sam_jax.evaluation.errors import CheckpointError
from sam_jax.training.config import TrainConfig
from sam_jax.weights.io import read_metadata
from sam_jax.weights.params import WeightsError

ZERO_SHOT_MODALITIES = "t1n_t2w_t2f"  # SAM's RGB slots take T1, T2, FLAIR (docs/reference.md §4)
ADAPTERS = {"final": "adapter.safetensors", "best": "adapter_best.safetensors"}  # --select: which model of a run


@dataclasses.dataclass
class TrainedModel:
    """A model ready for inference and how its inputs must be prepared."""

    model: Sam
    config: TrainConfig
    adaptation: AdaptationConfig
    name: str
    sam_rgb_input: bool = False  # zero-shot: intensities mapped to 0–255 and SAM's RGB normalisation

    @property
    def image_size(self) -> int:
        return self.config.image_size


def load_trained(workdir, sam_weights: str | None = None, select: str = "final") -> TrainedModel:
    """The model trained in `workdir`: its last step (`final`) or its best validation Dice (`best`, what the paper
    reported); `sam_weights` overrides the base weights path stored in config.json."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise CheckpointError(f"{workdir}: no config.json; is this a training workdir?")
    if select not in ADAPTERS:
        raise CheckpointError(f"--select {select}: expected one of {', '.join(ADAPTERS)}")
    adapter = workdir / ADAPTERS[select]
    if not adapter.is_file():
        if select == "best" and (workdir / ADAPTERS["final"]).is_file():
            raise CheckpointError(f"{adapter}: no such file; the run had no validation split for its domain, so it "
                                  f"has no best checkpoint: use --select final")
        raise CheckpointError(f"{adapter}: no such file; training writes it at the end of a run")
    cfg = TrainConfig.load(workdir)
    if sam_weights is not None:
        cfg = cfg.replace(sam_weights=sam_weights)
    if cfg.sam_weights and not Path(cfg.sam_weights).is_file():
        raise CheckpointError(f"{workdir}/config.json names SAM weights {cfg.sam_weights}, which do not exist; "
                              f"pass --sam_weights with their new path")
    adaptation = cfg.adaptation()
    try:
        model = build_model(cfg.sam_config(), adaptation, sam_weights=cfg.sam_weights or None,
                            rngs=nnx.Rngs(cfg.seed))
        load_adapter(model, adapter, adaptation, cfg.base_sha256())
    except (AdaptationError, WeightsError, ValueError) as e:
        raise CheckpointError(f"{workdir}: the adapter does not fit the run's config: {e}") from None
    return TrainedModel(model, cfg, adaptation, name=workdir.name if select == "final" else f"{workdir.name}_{select}")


def load_zero_shot(sam_weights: str, model_type: str = "auto", image_size: int = 1024,
                   modalities: str = ZERO_SHOT_MODALITIES) -> TrainedModel:
    """Plain SAM on a 3-channel layout of the modalities (Table 1's zero-shot row); `auto`: the size the converted
    file says it holds."""
    if not Path(sam_weights).is_file():
        raise CheckpointError(f"--sam_weights {sam_weights}: no such file")
    if model_type == "auto":
        try:
            model_type = read_metadata(sam_weights).get("model_type", "")
        except WeightsError as e:
            raise CheckpointError(str(e)) from None
        if not model_type:
            raise CheckpointError(f"{sam_weights}: its header names no model type; pass --model_type")
    cfg = TrainConfig(model_type=model_type, image_size=image_size, sam_weights=sam_weights, modalities=modalities,
                      lora_rank=0, trainable="none", normalisation="none")
    adaptation = cfg.adaptation()
    if adaptation.in_chans != 3:
        raise CheckpointError(f"zero-shot SAM takes 3 channels; --modalities {modalities} gives {adaptation.in_chans}")
    try:
        model = build_model(cfg.sam_config(), adaptation, sam_weights=sam_weights, rngs=nnx.Rngs(0))
    except (AdaptationError, WeightsError, ValueError) as e:
        raise CheckpointError(f"{sam_weights}: {e}") from None
    layout = next((name for name, chans in LAYOUTS.items() if chans == adaptation.modalities),
                  "_".join(adaptation.modalities))
    size = "" if image_size == 1024 else f"_{image_size}"
    return TrainedModel(model, cfg, adaptation, name=f"sam_{model_type}_zero_shot_{layout}{size}", sam_rgb_input=True)
