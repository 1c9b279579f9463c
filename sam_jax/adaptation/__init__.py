"""SAM adapted to multi-parametric MRI: surgery on a built model (patch embedding, LoRA, cross-slice attention),
trainable-parameter rules and adapter files. Either image encoder takes every adaptation (`sites`: where each
attaches); the original code's zero_rel_pos defect applies to SAM's ViT only.

`build_model` is the one entry point: build SAM → load its weights → `adapt`. Parameter paths of SAM's weights
are unchanged by the surgery, so SAM files and adapter files both load by path.
"""

from __future__ import annotations

from flax import nnx

from sam_jax.adaptation.adapter_io import base_weights_sha256, load_adapter, save_adapter
from sam_jax.adaptation.config import AdaptationConfig
from sam_jax.adaptation.cross_slice import add_cross_slice
from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.lora import apply_lora, fold
from sam_jax.adaptation.modalities import parse_modalities
from sam_jax.adaptation.original import reproduce_defects
from sam_jax.adaptation.patch_embed import adapt_patch_embed
from sam_jax.adaptation.trainable_rules import PRESETS, count_parameters, partition
from sam_jax.config import SamConfig
from sam_jax.model import Sam
from sam_jax.model.abstract import abstract
from sam_jax.weights.io import load_sam_weights


def adapt(model: Sam, adaptation_config: AdaptationConfig, *, rngs: nnx.Rngs) -> Sam:
    """Apply `adaptation_config` to a plain 3-channel SAM in place; returns `model`."""
    if model.config.in_chans != 3:
        raise AdaptationError(f"adapt a plain 3-channel SAM; this one takes {model.config.in_chans} channels")
    if model.config.image_encoder != "vit" and (problems := adaptation_config.tiny_vit_problems()):
        raise AdaptationError(f"a TinyViT image encoder: {'; '.join(problems)}")
    adapt_patch_embed(model, adaptation_config.in_chans, adaptation_config.patch_embed_init, rngs=rngs)
    apply_lora(
        model,
        rank=adaptation_config.lora_rank,
        alpha=adaptation_config.lora_alpha,
        targets=adaptation_config.lora_targets,
        rngs=rngs,
    )
    if adaptation_config.cross_slice:
        add_cross_slice(model)
    reproduce_defects(
        model,
        zero_rel_pos=adaptation_config.zero_rel_pos,
        random_decoder_mlps=adaptation_config.random_decoder_mlps,
        decoder_first_residual=adaptation_config.decoder_first_residual,
        rngs=rngs,
    )
    model.config = model.config.replace(in_chans=adaptation_config.in_chans)
    return model


def build_model(sam_config: SamConfig, adaptation_config: AdaptationConfig, *, sam_weights=None, rngs: nnx.Rngs) -> Sam:
    """SAM from its 3-channel config, filled from `sam_weights` (a converted file) if given, then adapted."""
    if sam_config.in_chans != 3:
        raise AdaptationError(
            f"build from SAM's 3-channel config (in_chans={sam_config.in_chans} given); "
            f"the input channels come from the adaptation's modalities"
        )
    if sam_weights is None:
        model = Sam(sam_config, rngs=rngs)
    else:  # every variable comes from the file: build the structure only, with no initialiser run or compiled
        model = abstract(lambda rngs: Sam(sam_config, rngs=rngs))
        load_sam_weights(model, sam_weights)
    return adapt(model, adaptation_config, rngs=rngs)


__all__ = [
    "AdaptationConfig",
    "AdaptationError",
    "PRESETS",
    "adapt",
    "base_weights_sha256",
    "build_model",
    "count_parameters",
    "fold",
    "load_adapter",
    "parse_modalities",
    "partition",
    "save_adapter",
]
