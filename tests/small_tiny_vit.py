"""A TinyViT SAM small enough for CPU tests in seconds, with every kind of block TinyViT has."""

from sam_jax.config import sam_config

# Stage 1 at 32² in 7×7 windows (padded to 35), stage 2 at 16² in 5×5 (padded to 20), stage 3 at 16² in 4×4 (exact);
# 2, 3 and 4 heads of width 8.
TINY_VIT = sam_config(
    "lite_medsam",
    image_size=64,
    tiny_vit_embed_dims=(8, 16, 24, 32),
    tiny_vit_depths=(1, 1, 2, 1),
    tiny_vit_num_heads=(1, 2, 3, 4),
    tiny_vit_window_sizes=(7, 7, 5, 4),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
