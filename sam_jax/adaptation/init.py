"""PyTorch's default weight initialiser, which the paper's code relies on for new weights."""

from __future__ import annotations

import jax


def kaiming_uniform_sqrt5(key, shape, fan_in: int, dtype=jax.numpy.float32):
    """kaiming_uniform_(a=√5), PyTorch's default for Linear/Conv2d weights: U(±gain·√(3/fan_in)) with
    gain = √(2/(1+a²)) = √(1/3), i.e. U(±1/√fan_in)."""
    bound = fan_in**-0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
