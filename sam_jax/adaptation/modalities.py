"""MRI modalities as input channels: BraTS 2023's four sequences and the paper's named channel layouts.

A layout is a tuple of modality names, one per input channel. `all4` is the paper's method (a 4-channel patch
embedding); the 3-channel layouts keep SAM's RGB embedding: one modality repeated, or T1/T2/FLAIR stacked (T1Gd left
out because clinicians read it for the tumour core, not the whole extent).
"""

from __future__ import annotations

from typing import Dict, Tuple

from sam_jax.adaptation.errors import AdaptationError

# BraTS 2023 file suffixes → the sequence they hold.
MODALITIES: Dict[str, str] = {"t1n": "T1", "t1c": "T1Gd", "t2w": "T2", "t2f": "T2-FLAIR"}

LAYOUTS: Dict[str, Tuple[str, ...]] = {
    "all4": ("t1n", "t1c", "t2w", "t2f"),
    **{f"{m}_x3": (m, m, m) for m in MODALITIES},
    "t1n_t2w_t2f": ("t1n", "t2w", "t2f"),
}


def check_modalities(modalities: Tuple[str, ...]) -> Tuple[str, ...]:
    modalities = tuple(modalities)
    if not modalities:
        raise AdaptationError("no modalities given; at least one input channel is needed")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise AdaptationError(
            f"unknown modalities {unknown}; expected names among {sorted(MODALITIES)} "
            f"or a layout among {sorted(LAYOUTS)}"
        )
    return modalities


def parse_modalities(spec: str) -> Tuple[str, ...]:
    """A layout name (`all4`, `t2f_x3`, …) or comma-separated modality names (`t1n,t1c,t2w,t2f`) → channel tuple."""
    spec = spec.strip()
    if spec in LAYOUTS:
        return LAYOUTS[spec]
    return check_modalities(tuple(m.strip() for m in spec.split(",") if m.strip()))
