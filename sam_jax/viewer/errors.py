"""Errors of the viewer, each answered with its HTTP status and the message as JSON."""

from sam_jax.errors import SamJaxError


class ViewerError(SamJaxError):
    """A request the viewer cannot serve; `status` is the HTTP answer."""

    status = 422


class BadRequest(ViewerError):
    """A malformed request: missing or ill-typed parameters, a body that is not JSON."""

    status = 400


class NotFound(ViewerError):
    """A case, session or file the viewer does not serve."""

    status = 404


class SaveError(ViewerError):
    """The mask could not be written (a read-only data directory, a full disk)."""

    status = 500
