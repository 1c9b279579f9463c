"""The one error type of model adaptation: a configuration, model or adapter file that does not fit."""


class AdaptationError(ValueError):
    """An adaptation setting, a model to adapt or an adapter file is not what the adaptation needs."""
