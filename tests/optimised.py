"""`optimised_jit`: nnx.jit for the few tests that run a real-size model (ViT-B at 1024², LiteMedSAM at 256²) in the
test process. conftest.py turns XLA's CPU optimisation off for the session, where compiling the tests' hundreds of
tiny programs is most of their time; a real-size encoder then runs 3-5× slower than it compiles (LiteMedSAM on 3
slices: 12 s unoptimised, 2.5 s optimised). This puts the default level back for one function's program."""

import jax
from flax import nnx

XLA_DEFAULT = {"xla_backend_optimization_level": 2}


def optimised_jit(fn):
    """`fn(model, *args)` jitted with XLA's default optimisation, the model split into structure and state."""
    jitted = jax.jit(
        lambda graphdef, state, *args: fn(nnx.merge(graphdef, state), *args),
        static_argnums=0,
        compiler_options=XLA_DEFAULT,
    )
    return lambda model, *args: jitted(*nnx.split(model), *args)
