"""The one exception the metrics raise for bad input, so callers can report it without a deep stack trace."""

from sam_jax.errors import SamJaxError


class MetricInputError(SamJaxError, ValueError):
    """An input to a metric has the wrong shape, dtype, values or spacing; the message names the argument."""
