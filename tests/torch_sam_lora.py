"""The paper's training step in PyTorch, the benchmark's reference: segment_anything's SAM with LoRA (rank 4, alpha 1)
on q, v, lin1, lin2, a new 4-channel patch embedding, Adam lr 1e-4 and BCE on the low-resolution logits.

Built from the segment-anything package with random weights (speed does not depend on them). Trainable: LoRA, the
patch embedding and the mask decoder, as in the paper. The step takes images already resized to the model's input
size (the paper's code resizes on the host), one click per slice, and decodes slice by slice, as SAM's batched
`Sam.forward` does (the decoder would otherwise pair every embedding with every prompt).
"""

from __future__ import annotations

import math

import torch
import torchvision_stand_in
from torch import nn

torchvision_stand_in.install()
from torch_reference import torch_sam_parts  # noqa: E402  (segment_anything, after the stand-in)


class LoRA(nn.Module):
    """`base` plus s·(x·A)·B on the chosen equal sections of its output (A kaiming-uniform, B zero)."""

    def __init__(self, base: nn.Linear, sections: int, targets, rank: int = 4, alpha: float = 1.0):
        super().__init__()
        self.base, self.sections, self.targets, self.scale = base, sections, tuple(targets), alpha / rank
        width = base.out_features // sections
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for _ in self.targets:
            a = nn.Parameter(torch.empty(base.in_features, rank))
            nn.init.kaiming_uniform_(a.T, a=math.sqrt(5))
            self.a.append(a)
            self.b.append(nn.Parameter(torch.zeros(rank, width)))

    def forward(self, x):
        y = self.base(x)
        deltas = [torch.zeros((), dtype=y.dtype, device=y.device)] * self.sections
        for i, a, b in zip(self.targets, self.a, self.b):
            deltas[i] = self.scale * ((x @ a) @ b)
        if self.sections == 1:
            return y + deltas[0]
        return y + torch.cat([d.expand(*y.shape[:-1], y.shape[-1] // self.sections) for d in deltas], -1)


class LoRASam(nn.Module):
    def __init__(self, config, in_chans: int = 4, rank: int = 4, alpha: float = 1.0):
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = torch_sam_parts(config, in_chans=3)
        self.requires_grad_(False)
        p = config.patch_size
        self.image_encoder.patch_embed.proj = nn.Conv2d(in_chans, config.encoder_embed_dim, p, p)
        for block in self.image_encoder.blocks:
            block.attn.qkv = LoRA(block.attn.qkv, 3, (0, 2), rank, alpha)  # q and v of the fused projection
            block.mlp.lin1 = LoRA(block.mlp.lin1, 1, (0,), rank, alpha)
            block.mlp.lin2 = LoRA(block.mlp.lin2, 1, (0,), rank, alpha)
        self.mask_decoder.requires_grad_(True)

    def encode(self, images):
        return self.image_encoder(images)

    def forward(self, images, coords, labels):
        """images (B, C, S, S), coords (B, N, 2), labels (B, N) → low-res logits (B, 1, S/4, S/4)."""
        return decode_each(self.prompt_encoder, self.mask_decoder, self.encode(images), coords, labels)


def decode_each(prompt_encoder, mask_decoder, embeddings, coords, labels):
    """Each slice's embedding (B, 256, h, w) decoded with its own clicks, coords (B, N, 2), labels (B, N) → low-res
    logits (B, 1, H, W), one mask each."""
    logits = []
    for i in range(embeddings.shape[0]):
        sparse, dense = prompt_encoder(points=(coords[i : i + 1], labels[i : i + 1]), boxes=None, masks=None)
        low_res, _ = mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits.append(low_res)
    return torch.cat(logits)


def make_train_step(model: LoRASam, *, autocast_dtype=None, lr: float = 1e-4):
    """step(images, coords, labels, target) → loss (a float, which syncs the device)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    device = next(model.parameters()).device.type

    def step(images, coords, labels, target):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images, coords, labels)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step
