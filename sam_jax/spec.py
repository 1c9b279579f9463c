"""The run spec: everything that defines a model and the inputs it takes, in one frozen dataclass.

SAM's size and input size, its adaptation (the fields of `AdaptationConfig`, which this extends), the attention
kernel, the slice stack, how volumes become slices (normalisation, brain crop, resize rule), the seed, and the base
weights with their identity. It is validated once, at construction; every adapter file carries it in its header and
every run directory in `config.json`, so evaluation, prediction and the analyses rebuild the model from either alone.
Training's options extend it (`sam_jax.training.config.TrainConfig`); no field is defined twice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, Mapping

from sam_jax import settings
from sam_jax.adaptation.config import AdaptationConfig
from sam_jax.config import ATTENTION_IMPLEMENTATIONS, PRESETS, PRETRAINED_INPUTS, SamConfig, sam_config
from sam_jax.data.boxes import PROMPTS
from sam_jax.data.preprocess import NORMALISATIONS
from sam_jax.errors import SpecError
from sam_jax.model.frame import RESIZE_RULES
from sam_jax.settings import setting

METADATA_KEY = "run_spec"  # the spec's JSON in an adapter file's header
_SAM = SamConfig()


@dataclasses.dataclass(frozen=True)
class RunSpec(AdaptationConfig):
    model_type: Literal[tuple(PRESETS)] = setting("vit_b", "SAM's size (tiny and demo are small test models).")
    image_size: int = setting(
        0,
        "Model input size (a multiple of the patch size; the base weights are resized to it); 0: the model's own "
        "(1024 for SAM and MobileSAM, 256 for LiteMedSAM).",
        at_least=0,
    )
    attention: Literal[ATTENTION_IMPLEMENTATIONS] = setting(
        _SAM.attention,
        "Attention kernel: plain (bias added to the logits, as SAM), folded (the bias folded into "
        "longer q/k vectors; same maths, faster on CPU), cudnn (folded through cuDNN flash attention; "
        "GPU with bfloat16).",
    )
    remat_attention: bool = setting(
        _SAM.remat_attention, "Recompute attention probabilities in the backward pass (less memory)."
    )
    slices: int = setting(
        1, "Z: contiguous slices per sample (a cross-slice model sees each slice in its stack).", at_least=1
    )
    normalisation: Literal[NORMALISATIONS] = setting(
        "zscore",
        "Per-modality intensities over the brain: zscore (clipped to the 0.5–99.5 percentiles), none (raw, "
        "the paper), sam_rgb (zero-shot SAM: percentiles stretched to 0–255, then SAM's RGB statistics), "
        "lite_medsam (LiteMedSAM's: percentiles stretched to 0–255 integers; the model frame then min–max scales "
        "each slice).",
    )
    crop_to_brain: bool = setting(False, "Crop volumes to the brain's bounding box (the paper does).")
    resize: Literal[RESIZE_RULES] = setting(
        RESIZE_RULES[0],
        "Slice to model input: longest_side (SAM's rule: aspect "
        "kept, padded bottom/right) or stretch (the original "
        "code: each axis to the square).",
    )
    click_order: Literal["xy", "row_col"] = setting(
        "xy",
        "Clicks as SAM expects them (xy), or row_col (the original code passed (row, col) where SAM reads (x, y)).",
    )
    prompt: Literal[PROMPTS] = setting(
        "click",
        "Prompts: click (one per slice, see click_policy), box (each tumour slice's box, each side widened in "
        "training by a random 0–5 pixels as MedSAM's; a slice without tumour gets none), or both (click and box). "
        "Evaluation prompts the volumetric protocol as the run was trained.",
    )
    broadcast_clicks: bool = setting(
        False,
        "Original code: every slice of a batch (of a volume, in the paper "
        "protocol) decoded with the clicks of all its slices.",
    )
    seed: int = setting(0, "Seed for initialisation, data order and clicks.", at_least=0)
    sam_weights: str = setting(
        "", "Converted SAM weights (convert/sam_weights.py). Empty: random init, loudly.", resume="may_change"
    )  # where they now lie; their identity is base_sha256
    base_sha256: str = setting("", "Identity of the base weights; filled in when a run starts.", flag=False)

    def __post_init__(self):
        if self.image_size == 0 and self.model_type in PRESETS:  # recorded resolved: a run's files name its size
            object.__setattr__(self, "image_size", PRESETS[self.model_type].image_size)
        super().__post_init__()

    @staticmethod
    def _invalid(problems: list[str]) -> SpecError:
        return SpecError("invalid settings:\n  - " + "\n  - ".join(problems))

    def problems(self) -> list[str]:
        problems = super().problems() + settings.problems(self, RunSpec)
        try:
            self.sam_config()
        except ValueError as e:  # the input size against the patch size; a bad model_type or attention is named above
            if str(e) not in problems:
                problems.append(str(e))
        if self.model_type in PRESETS and PRESETS[self.model_type].image_encoder != "vit":
            problems += [f"model_type {self.model_type} (TinyViT): {p}" for p in self.tiny_vit_problems()]
        own = PRESETS[self.model_type].pretrained_input if self.model_type in PRESETS else self.normalisation
        if self.normalisation in PRETRAINED_INPUTS and self.normalisation != own:
            problems.append(
                f"normalisation {self.normalisation} is the input of other pretrained weights; model_type "
                f"{self.model_type} expects normalisation {own} (or zscore or none to train on)"
            )
        if self.normalisation == "sam_rgb" and len(self.modalities) != 3:
            problems.append(
                f"normalisation sam_rgb feeds SAM's RGB input: it takes 3 channels (modalities), "
                f"not {len(self.modalities)}"
            )
        return problems

    def sam_config(self) -> SamConfig:
        """SAM's 3-channel config at this input size and kernel (the adaptation sets the channels)."""
        return sam_config(
            self.model_type, image_size=self.image_size, attention=self.attention, remat_attention=self.remat_attention
        )

    @property
    def stack(self) -> int:
        """Slices a model input stack holds: the cross-slice model's Z, else 1."""
        return self.slices if self.cross_slice else 1

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def with_base_identity(self):
        """Paths made absolute (the spec then rebuilds the model from any working directory) and the base weights'
        identity filled in."""
        from sam_jax.adaptation.adapter_io import base_weights_sha256

        weights = str(Path(self.sam_weights).expanduser().absolute()) if self.sam_weights else ""
        identity = base_weights_sha256(weights) if weights else f"random-init-seed-{self.seed}"
        return self.replace(sam_weights=weights, base_sha256=identity)

    # Serialisation: JSON of every field; keys of other kinds (a training config's) are ignored when reading.
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "settings"):
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})
        except (TypeError, SpecError) as e:
            raise SpecError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "settings"):
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise SpecError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: expected a JSON object of settings")
        return cls.from_dict(raw, source)

    @classmethod
    def load(cls, workdir):
        """The spec a run directory recorded in its config.json."""
        path = Path(workdir) / "config.json"
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"{path}: cannot read ({e.strerror or e})") from None
        return cls.from_json(text, str(path))

    def to_metadata(self) -> dict[str, str]:
        """For an adapter file's header: the adaptation's keys (which `load_adapter` checks) and the whole spec."""
        spec = RunSpec.from_dict(self.to_dict())  # only the spec's own fields, never a training config's
        return {**super().to_metadata(), METADATA_KEY: spec.to_json()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "adapter"):
        if METADATA_KEY not in metadata:
            raise SpecError(f"{source}: its header holds no run spec (written before sam-jax stored one)")
        return RunSpec.from_json(metadata[METADATA_KEY], source)
