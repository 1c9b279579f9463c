"""What adaptation to apply to a SAM: input modalities, LoRA, cross-slice attention, which parameters train.

Defaults are the paper's method (`-mod sam_lora -four_chan True`): four modalities through a new randomly
initialised patch embedding, LoRA rank 4 / alpha 1 on q, v, lin1, lin2, no cross-slice attention, and LoRA + patch
embedding + mask decoder trained. The config is a frozen dataclass stored as string metadata in adapter files.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Literal, Mapping, Tuple

from sam_jax import settings
from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.modalities import LAYOUTS, MODALITIES, parse_modalities
from sam_jax.adaptation.trainable_rules import PRESETS
from sam_jax.errors import SamJaxError
from sam_jax.settings import setting

_DEFECTS = ("zero_rel_pos", "random_decoder_mlps", "decoder_first_residual")


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    modalities: Tuple[str, ...] = setting(
        LAYOUTS["all4"], f"Input channels: a layout ({', '.join(LAYOUTS)}) or a comma list of {', '.join(MODALITIES)}."
    )
    patch_embed_init: Literal["random", "rgb_mean"] = setting(
        "random",
        "New patch embedding for != 3 channels: random (the paper), or rgb_mean (each channel the mean of "
        "SAM's RGB filters: equal channels embed as SAM embeds that image).",
    )
    lora_rank: int = setting(4, "LoRA rank (0: no LoRA).", at_least=0)
    lora_alpha: float = setting(1.0, "LoRA alpha; the update is scaled by alpha / rank.")
    lora_targets: Tuple[Literal["q", "k", "v", "proj", "lin1", "lin2"], ...] = setting(
        ("q", "v", "lin1", "lin2"),
        "Layers of every encoder attention block given LoRA (q, k, v: sections of the fused qkv; proj: attention's "
        "output; lin1, lin2: the MLP's first and second layer, named fc1, fc2 in TinyViT).",
    )
    cross_slice: bool = setting(
        False, "Cross-slice attention in every encoder attention block (needs slices > 1 to act)."
    )
    trainable: Literal[tuple(PRESETS)] = setting(
        "lora",
        "Which parameters train: lora is the paper's (LoRA, patch embedding, mask decoder); "
        "patch_embed_only then lora_frozen_patch make the two-step ablation.",
    )
    # The original paper code's model defects (sam_jax.adaptation.original; docs/reference.md §4), off by default.
    zero_rel_pos: bool = setting(
        False, "Original code: the encoder's relative-position tables left at zero (never loaded from SAM)."
    )
    random_decoder_mlps: bool = setting(
        False,
        "Original code: the decoder's two-way transformer MLPs left at PyTorch's random init (never loaded from SAM).",
    )
    decoder_first_residual: bool = setting(
        False, "Original code: a residual around the decoder's first token self-attention (SAM has none)."
    )

    def __post_init__(self):
        problems = []
        named = self.modalities if isinstance(self.modalities, str) else ",".join(self.modalities)
        try:  # a layout name, or modality names (a flag gives a list)
            object.__setattr__(self, "modalities", parse_modalities(named))
        except AdaptationError as e:
            problems.append(str(e))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if problems := problems + self.problems():
            raise self._invalid(problems)

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when nothing is); subclasses add theirs."""
        problems = settings.problems(self, AdaptationConfig)
        if not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            problems.append(f"lora_alpha {self.lora_alpha!r}: expected a finite number > 0")
        if len(set(self.lora_targets)) != len(self.lora_targets):
            problems.append(f"lora_targets {','.join(self.lora_targets)} name one layer twice")
        if self.lora_rank and not self.lora_targets:
            problems.append(f"lora_rank {self.lora_rank} with no LoRA targets; set lora_rank=0 for no LoRA")
        return problems

    @staticmethod
    def _invalid(problems: list[str]) -> SamJaxError:
        return AdaptationError("; ".join(problems))

    def tiny_vit_problems(self) -> list[str]:
        """What a TinyViT image encoder (LiteMedSAM, MobileSAM) cannot take: only the original code's zero_rel_pos,
        a defect in tables TinyViT does not have (every adaptation and the decoder's defects apply)."""
        return ["zero_rel_pos: TinyViT has no relative-position tables to zero"] if self.zero_rel_pos else []

    @property
    def in_chans(self) -> int:
        return len(self.modalities)

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def replace(self, **changes) -> "AdaptationConfig":
        return dataclasses.replace(self, **changes)

    def adaptation(self) -> "AdaptationConfig":
        """The adaptation part alone (of a run spec or training config, which extend this class)."""
        return AdaptationConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AdaptationConfig)})

    def to_metadata(self) -> Dict[str, str]:
        """Every field as a string, for a safetensors header."""
        return {
            "modalities": ",".join(self.modalities),
            "patch_embed_init": self.patch_embed_init,
            "lora_rank": str(self.lora_rank),
            "lora_alpha": repr(float(self.lora_alpha)),
            "lora_targets": ",".join(self.lora_targets),
            "cross_slice": str(self.cross_slice).lower(),
            "trainable": self.trainable,
            **{name: str(getattr(self, name)).lower() for name in _DEFECTS},
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "AdaptationConfig":
        """Inverse of `to_metadata`; other keys of the header are ignored."""
        # Adapters written before the defect options existed have none of them: all off.
        metadata = {**{name: "false" for name in _DEFECTS}, **metadata}
        missing = [f.name for f in dataclasses.fields(AdaptationConfig) if f.name not in metadata]
        if missing:
            raise AdaptationError(f"adaptation metadata lacks {missing}")
        try:
            rank, alpha = int(metadata["lora_rank"]), float(metadata["lora_alpha"])
        except ValueError as e:
            raise AdaptationError(f"adaptation metadata has a malformed LoRA rank or alpha ({e})") from None
        for name in ("cross_slice",) + _DEFECTS:
            if metadata[name] not in ("true", "false"):
                raise AdaptationError(f"adaptation metadata: {name} {metadata[name]!r} is not true/false")
        split = lambda s: tuple(p for p in s.split(",") if p)  # noqa: E731
        return cls(
            modalities=split(metadata["modalities"]),
            patch_embed_init=metadata["patch_embed_init"],
            lora_rank=rank,
            lora_alpha=alpha,
            lora_targets=split(metadata["lora_targets"]),
            cross_slice=metadata["cross_slice"] == "true",
            trainable=metadata["trainable"],
            **{name: metadata[name] == "true" for name in _DEFECTS},
        )
