"""`optimised_jit`: nnx.jit with XLA's default CPU compiler settings, which conftest.py sets aside for the session
(apps.FAST_COMPILE: compiling the tests' thousands of tiny programs is most of their time). For the few tests that
run a real-size model (ViT-B at 1024², LiteMedSAM at 256²) in the test process, which then runs 3-5× slower than it
compiles (LiteMedSAM on 3 slices: 12 s unoptimised, 2.5 s optimised), and for those that ask two programs for
bit-equal results, which depend on how XLA fuses each."""

import jax
from apps import XLA_DEFAULTS
from flax import nnx


def optimised_jit(fn):
    """`fn(model, *args)` jitted with XLA's default settings, the model split into structure and state."""
    jitted = jax.jit(
        lambda graphdef, state, *args: fn(nnx.merge(graphdef, state), *args),
        static_argnums=0,
        compiler_options=XLA_DEFAULTS,
    )
    return lambda model, *args: jitted(*nnx.split(model), *args)
