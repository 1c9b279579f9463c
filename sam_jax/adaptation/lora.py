"""LoRA on the image encoder's linear layers: y = x·W + b + s·(x·A)·B, kept unfolded while training.

`LoRALinear` keeps the wrapped layer's `kernel` and `bias` under the same names, so SAM's parameter paths do not
change, and adds `nnx.LoRAParam` leaves beside them. For the fused qkv projection the targets q, k, v are the first,
second and third thirds of the output features (`lora_q_a` (in, r), `lora_q_b` (r, C), …); other layers get
`lora_a`, `lora_b`. A starts kaiming-uniform(a=√5) and B at zero, as in the paper's code, so an adapted model
computes exactly what the base model does until B moves. Folding W + s·A·B is for inference only (`fold`): while
training it would make the gradient of the full weight.

The update s·(x·A)·B has its own backward (`low_rank_update`): left to autodiff, XLA on CPU forms dA = xᵀ·(g·Bᵀ) by
writing a transposed copy of the whole activation x (for lin2, the GELU output, recomputed in transposed order),
which cost more than the layer's own matmuls. Contracting the token axes with the rank-r factor in front gives the
same numbers from x as it lies.
"""

from __future__ import annotations

import functools
from typing import Iterator, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from sam_jax.adaptation.init import kaiming_uniform_sqrt5

QKV_SECTIONS = ("q", "k", "v")


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
    """`base` (an nnx.Linear) plus rank-`rank` updates on the named equal sections of its output.

    `sections`: the names of the output's equal parts, ("q", "k", "v") for a fused projection or ("",) for one
    whole output; `targets`: those that get an update.
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
    ):
        self.kernel = base.kernel
        self.bias = base.bias
        self.sections = tuple(sections)
        self.targets = tuple(t for t in self.sections if t in targets)
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
        parts = jnp.split(y, len(self.sections), axis=-1)
        for i, section in enumerate(self.sections):
            if section in self.targets:
                a, b = self.factors(section)
                parts[i] = parts[i] + low_rank_update(x, a, b, self.scale)
        return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def folded_kernel(self):
        """W with every section's s·A·B added: the kernel of the equivalent plain Linear."""
        kernel = self.kernel[...]
        width = kernel.shape[1] // len(self.sections)
        for i, section in enumerate(self.sections):
            if section in self.targets:
                a, b = self.factors(section)
                kernel = kernel.at[:, i * width : (i + 1) * width].add(self.scale * (a @ b))
        return kernel


def lora_sites(model) -> Iterator[Tuple[nnx.Module, str, Tuple[str, ...]]]:
    """(parent module, attribute, target names of its output sections) of every encoder layer LoRA may target."""
    for block in model.image_encoder.blocks:
        yield block.attn, "qkv", QKV_SECTIONS
        yield block.attn, "proj", ("proj",)
        yield block.mlp, "lin1", ("lin1",)
        yield block.mlp, "lin2", ("lin2",)


def apply_lora(model, *, rank: int, alpha: float, targets: Tuple[str, ...], rngs: nnx.Rngs) -> None:
    """Wrap the targeted encoder layers of `model` in `LoRALinear`, in place (rank 0: nothing)."""
    if rank == 0:
        return
    for parent, name, sections in lora_sites(model):
        wanted = tuple(s for s in sections if s in targets)
        if not wanted:
            continue
        if len(sections) == 1:  # one whole output: its leaves are plain `lora_a`, `lora_b`
            sections = wanted = ("",)
        setattr(
            parent,
            name,
            LoRALinear(
                getattr(parent, name), sections=sections, targets=wanted, rank=rank, scale=alpha / rank, rngs=rngs
            ),
        )


def fold(model):
    """Merge every LoRA update into its kernel and drop the LoRA leaves, in place; returns `model`.

    The result has plain SAM's encoder layers (nnx.Linear), for inference or export as SAM weights.
    """
    for parent, name, _ in lora_sites(model):
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
