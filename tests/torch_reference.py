"""Randomly initialised PyTorch SAM (segment_anything) built from one of our configs, and its Flax twin."""

from functools import partial

import numpy as np
import torch
from flax import nnx
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sam_jax.config import SamConfig
from sam_jax.model import Sam as FlaxSam
from sam_jax.weights.io import assign, model_arrays
from sam_jax.weights.params import torch_to_flax


def torch_sam_parts(config: SamConfig, in_chans: int) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """segment_anything's image encoder (taking `in_chans` channels), prompt encoder and mask decoder of `config`,
    built in that order (so a seeded build draws the same initial weights wherever it is used)."""
    dim = config.prompt_embed_dim
    g = config.grid_size
    encoder = ImageEncoderViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=in_chans,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=config.mlp_ratio,
        out_chans=dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
    )
    prompt = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(g, g),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=config.num_multimask_outputs,
        transformer_dim=dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    return encoder, prompt, decoder


def torch_sam(config: SamConfig, seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    encoder, prompt, decoder = torch_sam_parts(config, config.in_chans)
    model = Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    randomise_parameters(model)
    return model.eval()


@torch.no_grad()
def randomise_parameters(model):
    """Give every parameter a random, non-default value: zero-initialised tables and unit norms would hide bugs."""
    for name, p in model.named_parameters():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")) or "embed" in name and p.ndim == 2:
            p.normal_(0, 0.5)
        elif p.ndim >= 2:
            p.normal_(0, 1 / np.sqrt(np.prod(p.shape[1:])))
        elif name.endswith("weight"):  # norms
            p.normal_(1, 0.2)
        else:
            p.normal_(0, 0.2)


def state_dict_numpy(model) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def flax_twin(config: SamConfig, reference: Sam) -> FlaxSam:
    model = FlaxSam(config, rngs=nnx.Rngs(1))
    shapes = {k: tuple(v.shape) for k, v in model_arrays(model).items()}
    assign(model, torch_to_flax(state_dict_numpy(reference), shapes))
    return model


def to_numpy(t):
    return t.detach().cpu().numpy()


def assert_close(ours, ref, rel=1e-4):
    """max |ours − ref| ≤ rel · max |ref| (the output's scale)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(np.abs(ref).max(initial=0.0), 1e-12)
    err = np.abs(ours - ref).max(initial=0.0)
    assert err <= rel * scale, f"max abs error {err:.3g} exceeds {rel:g} × scale {scale:.3g}"
    print(f"parity: max abs error {err:.3g} = {err / scale:.2e} × scale {scale:.3g}")  # shown with pytest -s
    return err / scale
