"""Model configurations: SAM's three published sizes, plus tiny ones for tests; SAM's pixel statistics.

A config is a frozen dataclass, so it can be hashed, stored as checkpoint metadata and compared. The image size
may differ from SAM's 1024: converted weights are resized to the new token grid when they are loaded
(`sam_jax.weights.resize`). The attention kernel is part of the config too: it changes no parameter, only how the
model computes, and being static it is part of the traced model, so every jitted use (training, evaluation,
prediction) runs the kernel its model was built with and compiles apart from a model built with another.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Tuple

from sam_jax import settings

# Attention kernels (`sam_jax.model.attention`); the list lives here, where the config is validated, because this
# module imports nothing of the package but `settings` and the model's modules import it.
ATTENTION_IMPLEMENTATIONS = ("plain", "folded", "cudnn")

# The ImageNet statistics SAM normalises its 0–255 RGB input with (not stored in the checkpoint): here, beside SAM's
# other facts, so the model and the data preparation (`sam_rgb`) read one copy without data importing the model.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class SamConfig:
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    in_chans: int = 3
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256  # SAM's neck output and the decoder's width
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    attention: Literal[ATTENTION_IMPLEMENTATIONS] = "folded"  # folded: SAM's maths, faster (plain is SAM's form)
    remat_attention: bool = False  # recompute attention probabilities in the backward pass instead of keeping them

    def __post_init__(self):
        if problems := settings.problems(self, SamConfig):
            raise ValueError("; ".join(problems))
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size!r}: expected a positive multiple of {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Tokens per side of the image embedding (64 for a 1024 input)."""
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask prompt and of the decoder's logits (256 for a 1024 input)."""
        return 4 * self.grid_size

    def replace(self, **changes) -> "SamConfig":
        return dataclasses.replace(self, **changes)


PRESETS = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)
    ),
    # A small SAM-shaped model that trains on two CPU cores in minutes: the out-of-the-box demo.
    "demo": SamConfig(
        encoder_embed_dim=128,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        image_size=128,
        window_size=4,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_num_heads=4,
        iou_head_hidden_dim=64,
    ),
    # Small enough for CPU tests in seconds, with every kind of block SAM has.
    "tiny": SamConfig(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=128,
        window_size=3,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    ),
}


def sam_config(name: str, **overrides) -> SamConfig:
    """A preset by name (`vit_b`, `vit_l`, `vit_h`, `demo`, `tiny`), with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"model_type {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
