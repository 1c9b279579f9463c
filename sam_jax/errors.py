"""The library's error family: one base type, one subclass per layer.

Every fault the library detects in its input (a setting, a file, a case, a checkpoint) is raised as a subclass of
`SamJaxError`, with the file or value at fault and what is wrong in the message; an app catches `SamJaxError` alone
and prints the message. Anything else is a bug and keeps its traceback.
"""


class SamJaxError(Exception):
    """A fault in what the user gave: the message names the file or setting and the fault."""


class SpecError(SamJaxError, ValueError):
    """A run spec or training setting out of range, unknown, or contradicting another."""
