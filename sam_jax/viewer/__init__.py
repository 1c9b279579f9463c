"""The interactive viewer: a local web page over `sam_jax.evaluation`'s segmenter, propagation and mask editing
(`python -m eval.viewer`). `build_app` gives the ASGI application."""

from sam_jax.viewer.app import build_app
from sam_jax.viewer.errors import BadRequest, NotFound, ViewerError

__all__ = ["BadRequest", "NotFound", "ViewerError", "build_app"]
