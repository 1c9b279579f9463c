"""Where the adaptations attach in either image encoder: SAM's ViT or TinyViT (LiteMedSAM, MobileSAM).

Both have attention blocks with a fused `qkv` and a `proj`, and an MLP of two linear layers; they differ in where
the blocks sit (TinyViT's are stages 1–3; stage 0 is convolutions), in the MLP's layer names (`lin1`, `lin2` against
PyTorch TinyViT's `fc1`, `fc2`, kept so the parameter paths stay the checkpoint's) and in the layout of the fused
qkv output: SAM's ViT gives three contiguous thirds (q, k, v), TinyViT gives each head its (q, k, v) side by side.
"""

from __future__ import annotations

from typing import Iterator, Tuple

from flax import nnx

from sam_jax.model import tiny_vit

QKV_SECTIONS = ("q", "k", "v")
# LoRA's target names for the MLP's first and second layer, on both encoders.
MLP_TARGETS = ("lin1", "lin2")


def attention_blocks(model) -> list:
    """The image encoder's blocks that attend: the ViT's blocks, TinyViT's TinyViTBlocks."""
    encoder = model.image_encoder
    if isinstance(encoder, tiny_vit.TinyViT):
        return [block for stage in encoder.layers for block in stage.blocks if isinstance(block, tiny_vit.TinyViTBlock)]
    return list(encoder.blocks)


def qkv_groups(attn) -> int:
    """The fused qkv output is `qkv_groups` equal groups, each (q, k, v) sections of equal width."""
    return attn.num_heads if isinstance(attn, tiny_vit.Attention) else 1


def split_qkv(qkv, groups: int):
    """q, k, v, each (…, C) with its heads in order, from a fused projection (…, 3C) laid out in `groups`."""
    grouped = qkv.reshape(*qkv.shape[:-1], groups, 3, -1)
    return tuple(grouped[..., i, :].reshape(*qkv.shape[:-1], -1) for i in range(3))


def lora_sites(model) -> Iterator[Tuple[nnx.Module, str, Tuple[str, ...], int]]:
    """(parent module, attribute, target names of its output sections, section groups) of every encoder layer LoRA
    may target."""
    for block in attention_blocks(model):
        yield block.attn, "qkv", QKV_SECTIONS, qkv_groups(block.attn)
        yield block.attn, "proj", ("proj",), 1
        names = ("fc1", "fc2") if isinstance(block, tiny_vit.TinyViTBlock) else MLP_TARGETS
        for name, target in zip(names, MLP_TARGETS):
            yield block.mlp, name, (target,), 1


def width(block) -> int:
    """The block's token width C."""
    return block.attn.proj.kernel.shape[-1]
