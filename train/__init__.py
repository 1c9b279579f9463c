import runpy


def cli():
    """`sam-jax-train` (pyproject.toml): runs train.main as __main__, as `python -m train.main` does,
    so its --help, flags and flagfile lookup are the same."""
    runpy.run_module("train.main", run_name="__main__", alter_sys=True)
