"""A setting is a config dataclass field declared once: its default, its help text, the values it allows (a
`Literal[...]` type, or a tuple of one) or the least integer it takes, and whether a resumed run may change it. The
checks (`problems`) and the apps' flags (`sam_jax.flags_util`) follow from that one declaration, so no list of
choices or bounds is written twice. Where a module owns the table of choices, the type is built from it
(`loss: Literal[LOSSES]`). This module imports nothing of the package: every config module may import it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Literal

Resume = Literal["fixed", "may_change"]


def setting(default, help: str, *, flag: bool = True, at_least: int | None = None, resume: Resume = "fixed"):
    """A config field with its help text. `flag=False` keeps it out of the apps' flags (a derived value);
    `at_least`: the least integer it takes; `resume="may_change"`: a run resumed from its workdir may set it
    otherwise (`sam_jax.training.workdir`)."""
    if resume not in typing.get_args(Resume):
        raise ValueError(f"resume {resume!r}: expected one of {', '.join(typing.get_args(Resume))}")
    return dataclasses.field(
        default=default, metadata={"help": help, "flag": flag, "at_least": at_least, "resume": resume}
    )


def choices(kind) -> tuple:
    """The values a `Literal[...]` type allows, or each element of a `Tuple[Literal[...], ...]`; () for any other."""
    if typing.get_origin(kind) is tuple:
        kind = typing.get_args(kind)[0]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


@functools.cache
def _own_fields(cls) -> tuple[tuple[dataclasses.Field, object], ...]:
    """(field, resolved type) of each field `cls` declares itself; inherited ones are its bases' to check."""
    own, hints = inspect.get_annotations(cls), typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.name in own)


def problems(config, cls) -> list[str]:
    """What is wrong in `config` with the fields `cls` declares: values outside their choices, then integers below
    their bound; one message per fault."""
    found = []
    for field, kind in _own_fields(cls):
        allowed, value = choices(kind), getattr(config, field.name)
        if not allowed:
            continue
        if typing.get_origin(kind) is tuple:
            if unknown := [v for v in value if v not in allowed]:
                found.append(
                    f"{field.name} {','.join(map(str, value))}: unknown {unknown}; expected among {', '.join(allowed)}"
                )
        elif value not in allowed:
            found.append(f"{field.name} {value!r}: expected one of {', '.join(allowed)}")
    for field, _ in _own_fields(cls):
        low, value = field.metadata.get("at_least"), getattr(config, field.name)
        if low is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            found.append(f"{field.name} {value!r}: expected an integer ≥ {low}")
    return found


def names(cls, **metadata) -> frozenset[str]:
    """The fields of `cls` (inherited ones included) whose metadata has these values, e.g. `resume="may_change"`."""
    return frozenset(
        f.name for f in dataclasses.fields(cls) if all(f.metadata.get(k) == v for k, v in metadata.items())
    )
