"""Which parameters train: an ordered list of (regex over the dot-joined path, 'train' | 'freeze'), first match wins.

Each regex must match a whole path (`re.fullmatch`), e.g. `image_encoder.blocks.0.attn.qkv.lora_q_a`. Every
parameter must match some rule; non-parameter variables (the prompt encoder's Gaussian, TinyViT's batch-norm
statistics: `Buffer`s) are always frozen.
`partition` splits a model into (graphdef, trainable, frozen) for a functional train step, and logs the counts.
"""

from __future__ import annotations

import re
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from absl import logging
from flax import nnx

from sam_jax.adaptation.errors import AdaptationError
from sam_jax.adaptation.patch_embed import first_conv

TRAIN, FREEZE = "train", "freeze"
Rules = Sequence[Tuple[str, str]]

_LORA = r".*\.lora_\w+"
# SAM's ViT: the 16×16 patch convolution. TinyViT: its whole stem (two Conv-BN, the norms' scale and shift included),
# which maps pixels to the first stage's tokens as the ViT's convolution does.
_PATCH_EMBED = r"image_encoder\.patch_embed\..*"
_MASK_DECODER = r"mask_decoder\..*"
_GATES = r".*\.cross_slice\.gate"
_EVERYTHING = r".*"

PRESETS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    # The paper's method: LoRA, the new patch embedding and the whole mask decoder; prompt encoder frozen. On a
    # 3-channel model the embedding is SAM's own RGB one, which the paper keeps unmodified (§4.3, its code froze
    # it): see `_rules`.
    "lora": ((_LORA, TRAIN), (_PATCH_EMBED, TRAIN), (_MASK_DECODER, TRAIN), (_GATES, TRAIN), (_EVERYTHING, FREEZE)),
    # The paper's two-step ablation: first the patch embedding alone, then LoRA (and decoder) with it frozen.
    "patch_embed_only": ((_PATCH_EMBED, TRAIN), (_EVERYTHING, FREEZE)),
    "lora_frozen_patch": ((_LORA, TRAIN), (_MASK_DECODER, TRAIN), (_GATES, TRAIN), (_EVERYTHING, FREEZE)),
    "full": ((_EVERYTHING, TRAIN),),
    "decoder_only": ((_MASK_DECODER, TRAIN), (_EVERYTHING, FREEZE)),
    "none": ((_EVERYTHING, FREEZE),),  # zero-shot
}


class TrainableRulesError(AdaptationError):
    """Rules that are malformed or leave a parameter unmatched."""


def _rules(rules: Union[str, Rules], in_chans: int) -> Rules:
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise TrainableRulesError(f"unknown trainable preset {rules!r}; expected one of {sorted(PRESETS)}")
        if rules == "lora" and in_chans == 3:
            return ((_PATCH_EMBED, FREEZE),) + PRESETS[rules]
        return PRESETS[rules]
    for rule in rules:
        if len(rule) != 2 or rule[1] not in (TRAIN, FREEZE):
            raise TrainableRulesError(f"rule {rule!r}: expected (regex, 'train' | 'freeze')")
    return rules


def parameter_paths(model: nnx.Module) -> Dict[str, tuple]:
    """Dot-joined path → shape of every nnx.Param (LoRAParam included) of `model`."""
    return {".".join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def trainable_paths(model: nnx.Module, rules: Union[str, Rules]) -> Dict[str, bool]:
    """Parameter path → whether it trains under `rules` (a preset name or a rule list)."""
    in_chans = first_conv(model).in_features
    compiled = [(re.compile(pattern), action) for pattern, action in _rules(rules, in_chans)]
    decided, unmatched = {}, []
    for path in parameter_paths(model):
        action = next((a for pattern, a in compiled if pattern.fullmatch(path)), None)
        if action is None:
            unmatched.append(path)
        else:
            decided[path] = action == TRAIN
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else "")
        raise TrainableRulesError(f"{len(unmatched)} parameters match no trainable rule: {shown}")
    return decided


def count_parameters(state: nnx.State) -> int:
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state))


def partition(model: nnx.Module, rules: Union[str, Rules]):
    """(graphdef, trainable, frozen) such that `nnx.merge(graphdef, trainable, frozen)` rebuilds `model`."""
    decided = trainable_paths(model, rules)

    def is_trainable(path, variable):
        return isinstance(variable, nnx.Param) and decided[".".join(map(str, path))]

    graphdef, trainable, frozen = nnx.split(model, is_trainable, ...)
    logging.info(
        "trainable: %s parameters; frozen: %s variables",
        f"{count_parameters(trainable):,}",
        f"{count_parameters(frozen):,}",
    )
    return graphdef, trainable, frozen
