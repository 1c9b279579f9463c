import runpy


def cli():
    """`sam-jax-convert` (pyproject.toml): runs convert.sam_weights as __main__, as
    `python convert/sam_weights.py` does, so its --help, flags and flagfile lookup are the same."""
    runpy.run_module("convert.sam_weights", run_name="__main__", alter_sys=True)
