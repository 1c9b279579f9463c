import runpy


def cli():
    """`sam-jax-eval` (pyproject.toml): runs eval.main as __main__, as `python -m eval.main` does,
    so its --help, flags and flagfile lookup are the same."""
    runpy.run_module("eval.main", run_name="__main__", alter_sys=True)
