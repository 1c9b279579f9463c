"""The one error type of model adaptation: a configuration, model or adapter file that does not fit."""

from sam_jax.errors import SamJaxError


class AdaptationError(SamJaxError, ValueError):
    """An adaptation setting, a model to adapt or an adapter file is not what the adaptation needs."""
