"""LoRA on the image encoder's linear layers: y = x·W + b + s·(x·A)·B, kept unfolded while training.

`LoRALinear` keeps the wrapped layer's `kernel` and `bias` under the same names, so SAM's parameter paths do not
change, and adds `nnx.LoRAParam` leaves beside them. For the fused qkv projection the targets q, k, v are its
sections (`lora_q_a` (in, r), `lora_q_b` (r, C), …), wherever the encoder puts them (`sites`: thirds in SAM's ViT,
per head in TinyViT; B's columns are the section's in head order); other layers get `lora_a`, `lora_b`. A starts
kaiming-uniform(a=√5) and B at zero, as in the paper's code, so an adapted model computes exactly what the base model
does until B moves. Folding W + s·A·B is for inference only (`fold`): while
training it would make the gradient of the full weight.

The update s·(x·A)·B has its own backward (`low_rank_update`): left to autodiff, XLA on CPU forms dA = xᵀ·(g·Bᵀ) by
writing a transposed copy of the whole activation x (for lin2, the GELU output, recomputed in transposed order),
which cost more than the layer's own matmuls. Contracting the token axes with the rank-r factor in front gives the
same numbers from x as it lies.
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from sam_jax.adaptation.init import kaiming_uniform_sqrt5
from sam_jax.adaptation.sites import lora_sites


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def low_rank_update(x, a, b, scale: float):
    """scale·(x·A)·B for x (…, in), A (in, r), B (r, out)."""
    return _low_rank_fwd(x, a, b, scale)[0]


def _low_rank_fwd(x, a, b, scale):
    h = x @ a
    return scale * (h @ b), (x, a, b, h)


def _low_rank_bwd(scale, residuals, g):
    x, a, b, h = residuals
    tokens = tuple(range(x.ndim - 1))
    contract_tokens = ((tokens, tokens), ((), ()))
    gb = scale * (g @ b.T)  # (…, r)
    dx = gb @ a.T
    # (r, in) first, so that x is read in its own layout; the barrier keeps XLA from folding the transpose back into
    # the product, which it then runs as a slow (in, r) loop (17× slower on CPU).
    da = jax.lax.optimization_barrier(jax.lax.dot_general(gb, x, contract_tokens)).T
    db = scale * jax.lax.dot_general(h, g, contract_tokens)
    return dx, da.astype(a.dtype), db.astype(b.dtype)


low_rank_update.defvjp(_low_rank_fwd, _low_rank_bwd)


def _leaf_names(section: str) -> Tuple[str, str]:
    return (f"lora_{section}_a", f"lora_{section}_b") if section else ("lora_a", "lora_b")


class LoRALinear(nnx.Module):
    """`base` (an nnx.Linear) plus rank-`rank` updates on the named sections of its output.

    The output is `groups` equal groups, each the `sections` in order, all of one width: ("q", "k", "v") in 1 group
    for SAM's fused qkv (thirds), in one group per head for TinyViT's, ("",) for one whole output. `targets`: the
    sections that get an update; a section's update spans its columns in every group, in group order.
    """

    def __init__(
        self,
        base: nnx.Linear,
        *,
        sections: Tuple[str, ...],
        targets: Tuple[str, ...],
        rank: int,
        scale: float,
        rngs: nnx.Rngs,
        groups: int = 1,
    ):
        self.kernel = base.kernel
        self.bias = base.bias
        self.sections = tuple(sections)
        self.targets = tuple(t for t in self.sections if t in targets)
        self.groups = groups
        self.scale = scale
        fan_in, fan_out = base.kernel.shape
        width = fan_out // len(self.sections)
        for section in self.targets:
            a, b = _leaf_names(section)
            setattr(self, a, nnx.LoRAParam(kaiming_uniform_sqrt5(rngs.params(), (fan_in, rank), fan_in)))
            setattr(self, b, nnx.LoRAParam(jnp.zeros((rank, width))))

    def factors(self, section: str):
        a, b = _leaf_names(section)
        return getattr(self, a)[...], getattr(self, b)[...]

    def __call__(self, x):
        # The base product exactly as nnx.Linear computes it, so a zero B leaves the output bit-identical.
        y = jax.lax.dot_general(x, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())))
        if self.bias is not None:
            y = y + jnp.reshape(self.bias[...], (1,) * (y.ndim - 1) + (-1,))
        if not self.targets:
            return y
        updates = {
            section: jnp.split(low_rank_update(x, *self.factors(section), self.scale), self.groups, axis=-1)
            for section in self.targets
        }
        parts = jnp.split(y, self.groups * len(self.sections), axis=-1)  # group by group, each its sections
        for i, part in enumerate(parts):
            group, section = divmod(i, len(self.sections))
            if self.sections[section] in updates:
                parts[i] = part + updates[self.sections[section]][group]
        return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def folded_kernel(self):
        """W with every section's s·A·B added: the kernel of the equivalent plain Linear."""
        kernel = self.kernel[...]
        fan_in, fan_out = kernel.shape
        grouped = kernel.reshape(fan_in, self.groups, len(self.sections), -1)
        for i, section in enumerate(self.sections):
            if section in self.targets:
                a, b = self.factors(section)
                grouped = grouped.at[:, :, i].add((self.scale * (a @ b)).reshape(fan_in, self.groups, -1))
        return grouped.reshape(fan_in, fan_out)


def apply_lora(model, *, rank: int, alpha: float, targets: Tuple[str, ...], rngs: nnx.Rngs) -> None:
    """Wrap the targeted encoder layers of `model` in `LoRALinear`, in place (rank 0: nothing)."""
    if rank == 0:
        return
    for parent, name, sections, groups in lora_sites(model):
        wanted = tuple(s for s in sections if s in targets)
        if not wanted:
            continue
        if len(sections) == 1:  # one whole output: its leaves are plain `lora_a`, `lora_b`
            sections = wanted = ("",)
        setattr(
            parent,
            name,
            LoRALinear(
                getattr(parent, name),
                sections=sections,
                targets=wanted,
                rank=rank,
                scale=alpha / rank,
                groups=groups,
                rngs=rngs,
            ),
        )


def fold(model):
    """Merge every LoRA update into its kernel and drop the LoRA leaves, in place; returns `model`.

    The result has the plain encoder's layers (nnx.Linear), for inference or export as SAM weights.
    """
    for parent, name, *_ in lora_sites(model):
        layer = getattr(parent, name)
        if not isinstance(layer, LoRALinear):
            continue
        kernel, bias = layer.folded_kernel(), layer.bias
        plain = nnx.Linear(
            *kernel.shape,
            use_bias=bias is not None,
            kernel_init=lambda *_, k=kernel: k,
            bias_init=lambda *_, b=bias: b[...],
            rngs=nnx.Rngs(0),
        )
        setattr(parent, name, plain)
    return model
