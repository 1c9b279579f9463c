"""absl flags generated from a config dataclass, so every option is defined once, with its help text."""

from __future__ import annotations

import dataclasses
import typing

from absl import flags


def define_flags(config_cls, flag_values=flags.FLAGS) -> None:
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        kind, default, help_text = hints[field.name], field.default, field.metadata.get("help", "")
        if kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif kind is str:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
        else:  # tuples of strings
            flags.DEFINE_list(field.name, list(default), help_text, flag_values=flag_values)


def config_from_flags(config_cls, flag_values=flags.FLAGS, **overrides):
    values = {}
    for field in dataclasses.fields(config_cls):
        value = flag_values[field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_cls(**{**values, **overrides})
