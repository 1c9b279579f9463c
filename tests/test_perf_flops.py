"""Model FLOP counts against hand-worked and published figures."""

import pytest

from benchmarks.flops import encoder_forward_flops, train_step_flops
from sam_jax.config import SamConfig, sam_config


def test_one_global_block_by_hand():
    # grid 2×2 (4 tokens), C 8, MLP 16, one input channel, neck 4 channels; multiply-adds:
    # patch 4·256·1·8 = 8192, qkv+proj 4·8·32 = 1024, q·k and w·v 2·4·4·8 = 256, rel-pos 2·4·2·8 = 128,
    # MLP 2·4·8·16 = 1024, neck 4·8·4 + 4·4·4·9 = 704: 11,328 MACs.
    config = SamConfig(
        encoder_embed_dim=8,
        encoder_depth=1,
        encoder_num_heads=1,
        encoder_global_attn_indexes=(0,),
        image_size=32,
        in_chans=1,
        mlp_ratio=2.0,
        prompt_embed_dim=4,
    )
    assert encoder_forward_flops(config) == 2 * 11_328


def test_vit_b_1024_is_about_0_97_tflop():
    # docs/reference.md §3: ≈ 486 GMACs per 1024² image, forward.
    assert encoder_forward_flops(sam_config("vit_b")) == pytest.approx(0.972e12, rel=0.01)


def test_train_step_is_two_forwards_per_slice_and_cross_slice_adds_work():
    config = sam_config("vit_b", image_size=256)
    assert train_step_flops(config, 3) == 6 * encoder_forward_flops(config)
    assert encoder_forward_flops(config, cross_slice_z=4) > encoder_forward_flops(config)
