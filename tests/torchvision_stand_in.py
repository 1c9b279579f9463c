"""A stand-in for torchvision so that `segment_anything` imports beside the CPU torch wheel.

segment_anything imports torchvision at package import only for its predictor's resize and the automatic mask
generator's NMS; model building, forward and backward never call them. PyPI's torchvision does not load beside
torch 2.13.0 (docs/reference.md §3), so empty modules are registered whose functions fail loudly if called.
A working torchvision install is used as is. Shared by the benchmark's PyTorch reference and the tests.
"""

import sys
import types


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is stubbed out; this code path needs the real package")


_MODULES = {
    "torchvision": {},
    "torchvision.ops": {},
    "torchvision.ops.boxes": {"batched_nms": _unavailable, "box_area": _unavailable},
    "torchvision.transforms": {},
    "torchvision.transforms.functional": {"resize": _unavailable, "to_pil_image": _unavailable},
}


def install() -> None:
    """Register the stand-in unless a working torchvision imports."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        for key in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[key]
    for name, attrs in _MODULES.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
