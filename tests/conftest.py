"""Shared test set-up: a stand-in for torchvision so that `segment_anything` imports beside the CPU torch wheel.

segment_anything imports torchvision at package import only for its predictor's resize and the automatic mask
generator's NMS; the model code we test against never calls them. PyPI's torchvision does not load beside
torch 2.13.0 (reference.md §1), so we register empty modules that fail loudly if anything does call them.
"""

import sys
import types


def _torchvision_stand_in():
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is stubbed out in tests; this code path needs the real package")

    names = {
        "torchvision": {},
        "torchvision.ops": {},
        "torchvision.ops.boxes": {"batched_nms": unavailable, "box_area": unavailable},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"resize": unavailable, "to_pil_image": unavailable},
    }
    for name, attrs in names.items():
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


try:
    import torchvision  # noqa: F401  (a working install is used as is)
except Exception:
    for key in [k for k in sys.modules if k.startswith("torchvision")]:
        del sys.modules[key]
    _torchvision_stand_in()
