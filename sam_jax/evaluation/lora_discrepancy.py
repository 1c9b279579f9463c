"""How far apart two LoRA adaptations are, per encoder block and target (Eq. 6–8 of the paper).

An update is ΔW = s·A·B with A (in, r), B (r, out) in our (in, out) kernel layout (the paper's s·B·A transposed:
same singular values). Both the singular values of one update and the spectral norm of a difference come from small
QR factors: for ΔW = L·Rᵀ with L (in, k), R (out, k), L = Q₁T₁ and R = Q₂T₂ give ΔW = Q₁(T₁T₂ᵀ)Q₂ᵀ, whose singular
values are those of the k×k core (k = r for one update, 2r for a difference). Weyl's inequality makes
max_i |σ_i(ΔW₁) − σ_i(ΔW₂)| a lower bound on the exact ‖ΔW₁ − ΔW₂‖₂, which is reported too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from sam_jax.evaluation.errors import EvaluationError
from sam_jax.weights.io import read_arrays

TARGET_ORDER = ("q", "k", "v", "proj", "lin1", "lin2")
# SAM's ViT: `blocks.<i>`; TinyViT: `layers.<stage>.blocks.<i>`, whose MLP layers keep PyTorch's fc1/fc2 names.
_LEAF = re.compile(
    r"^image_encoder\.(?:layers\.(?P<stage>\d+)\.)?blocks\.(?P<block>\d+)\."
    r"(?:attn\.qkv\.lora_(?P<qkv>q|k|v)|attn\.(?P<proj>proj)\.lora|mlp\.(?P<mlp>lin1|lin2|fc1|fc2)\.lora)"
    r"_(?P<factor>a|b)$"
)
_MLP_TARGET = {"fc1": "lin1", "fc2": "lin2"}


def lora_factors(path) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """{(block, target): (s·A, B)} of an adapter file; TinyViT's attention blocks are numbered through its stages in
    order, as the ViT's are."""
    arrays, metadata = read_arrays(path)
    try:
        scale = float(metadata["lora_alpha"]) / int(metadata["lora_rank"])
    except (KeyError, ValueError, ZeroDivisionError):
        raise EvaluationError(f"{path}: no LoRA rank/alpha in its header (not a LoRA adapter file)") from None
    parts = defaultdict(dict)
    for name, array in arrays.items():
        if m := _LEAF.match(name):
            position = (int(m["stage"] or 0), int(m["block"]))
            target = m["qkv"] or m["proj"] or _MLP_TARGET.get(m["mlp"], m["mlp"])
            parts[(position, target)][m["factor"]] = np.asarray(array, np.float64)
    if not parts:
        raise EvaluationError(f"{path}: holds no LoRA factors (trained without LoRA?)")
    tiny_vit = any(name.startswith("image_encoder.layers.") for name in arrays)
    number = {p: i for i, p in enumerate(sorted({p for p, _ in parts}))} if tiny_vit else {}
    return {
        (number.get(position, position[1]), target): (scale * p["a"], p["b"])
        for (position, target), p in sorted(parts.items())
    }


def _core_singular_values(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Singular values of left @ right.T without forming it."""
    _, t_left = np.linalg.qr(left)
    _, t_right = np.linalg.qr(right)
    return np.linalg.svd(t_left @ t_right.T, compute_uv=False)


def update_singular_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """σ(ΔW) for ΔW = a @ b, a (in, r) already scaled, b (r, out); descending, length r."""
    return _core_singular_values(a, b.T)


def difference_norm(first, second) -> float:
    """Exact ‖a₁b₁ − a₂b₂‖₂ from the rank-≤2r factors [a₁, −a₂] and [b₁ᵀ, b₂ᵀ]."""
    (a1, b1), (a2, b2) = first, second
    return float(_core_singular_values(np.concatenate([a1, -a2], 1), np.concatenate([b1.T, b2.T], 1))[0])


def discrepancy(first: dict, second: dict) -> list[dict]:
    """Per (block, target) present in both: the Weyl bound and the exact spectral distance."""
    shared = sorted(set(first) & set(second), key=lambda key: (key[0], TARGET_ORDER.index(key[1])))
    if not shared:
        raise EvaluationError("the two adapters share no LoRA layer (different targets or depths)")
    rows = []
    for key in shared:
        s1, s2 = update_singular_values(*first[key]), update_singular_values(*second[key])
        if s1.shape != s2.shape:
            raise EvaluationError(f"block {key[0]} {key[1]}: LoRA ranks differ ({len(s1)} vs {len(s2)})")
        rows.append(
            {
                "block": key[0],
                "target": key[1],
                "weyl_bound": float(np.max(np.abs(s1 - s2))),
                "spectral_distance": difference_norm(first[key], second[key]),
                "sigma_1": s1.tolist(),
                "sigma_2": s2.tolist(),
            }
        )
    return rows


def pairwise(factors: list[dict], value: str = "weyl_bound") -> np.ndarray:
    """(N, N) mean over layers of `value` for every pair of adapters."""
    n = len(factors)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = np.mean([r[value] for r in discrepancy(factors[i], factors[j])])
    return out


def as_heatmap(rows: list[dict], value: str) -> tuple[np.ndarray, list[int], list[str]]:
    """(blocks × targets) array of `value`, with the block and target labels."""
    blocks = sorted({r["block"] for r in rows})
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in rows)]
    out = np.full((len(blocks), len(targets)), np.nan)
    for r in rows:
        out[blocks.index(r["block"]), targets.index(r["target"])] = r[value]
    return out, blocks, targets


def check_files(paths) -> list[Path]:
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise EvaluationError("give at least two adapter files to compare")
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise EvaluationError(f"no such adapter files: {missing}")
    return paths
