"""absl flags generated from a config dataclass, so every option is defined once, with its help text and choices
(`sam_jax.settings`); and the apps' flagfiles found wherever the user stands."""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import sys
import typing
from pathlib import Path

from absl import app, flags

from sam_jax.errors import SamJaxError
from sam_jax.host_memory import retain_freed_memory
from sam_jax.settings import choices


def _flag_fields(config_cls):
    return [f for f in dataclasses.fields(config_cls) if f.metadata.get("flag", True)]


def define_flags(config_cls, flag_values=flags.FLAGS) -> None:
    """A flag per field of `config_cls`: a field of choices (`Literal[...]`) an enum flag, which absl checks as it
    parses and whose help it opens with them; a tuple of choices a list flag, its help closing with them. The config
    checks everything else (bounds, lists, contradictions) when it is built, naming all the faults at once."""
    hints = typing.get_type_hints(config_cls)
    for field in _flag_fields(config_cls):
        kind, default, help_text = hints[field.name], field.default, field.metadata.get("help", "")
        allowed = choices(kind)
        if typing.get_origin(kind) is typing.Literal:
            flags.DEFINE_enum(field.name, default, allowed, help_text, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, default, help_text, flag_values=flag_values)
        elif kind is str:
            flags.DEFINE_string(field.name, default, help_text, flag_values=flag_values)
        else:  # tuples of strings
            help_text += f" Any of: {', '.join(allowed)}." if allowed else ""
            flags.DEFINE_list(field.name, list(default), help_text, flag_values=flag_values)


def config_from_flags(config_cls, flag_values=flags.FLAGS, **overrides):
    values = {}
    for field in _flag_fields(config_cls):
        value = flag_values[field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_cls(**{**values, **overrides})


class FlagfileError(SamJaxError, ValueError):
    """A --flagfile that cannot be found or read."""


def app_package_dir(package: str) -> Path:
    """The folder of an app package (`train`, `eval`): in the checkout, or in site-packages when installed from the
    wheel, which ships the flagfiles beside the apps as package data. Found from the package's import spec, as
    `python -m train.main` would find it, without running any of the app's code: the library reads the apps' data
    files (`sam_jax.evaluation.reproduce`), never imports them."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or ()) if spec else []
    if not folders:
        raise FlagfileError(f"the app package {package!r} is not installed (pip install sam-jax)")
    return Path(folders[0]).resolve()


def _flagfile_candidates(name: str, app_dir: Path, including_dir: Path | None) -> list[Path]:
    path = Path(name).expanduser()
    if path.is_absolute():
        return [path]
    # As given (relative to the working directory), then beside the flagfile that names it, then in the app's own
    # folder and the folder holding the apps (the checkout, or site-packages): `--flagfile=adult.flags` and a
    # nested `--flagfile=train/adult.flags` work from any working directory.
    places = [Path.cwd()] + ([including_dir] if including_dir else []) + [app_dir, app_dir.parent]
    return list(dict.fromkeys(place / path for place in places))


def find_flagfile(name: str, app_dir: Path, including_dir: Path | None = None) -> Path:
    """The file `--flagfile=name` means to the app in `app_dir` (see `app_package_dir`); the one lookup the apps and the
    library share. The error lists every place tried."""
    candidates = _flagfile_candidates(name, Path(app_dir), including_dir)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FlagfileError(f"--flagfile={name}: not found; looked in " + ", ".join(map(str, candidates)))
    return found.resolve()


def expand_flagfiles(argv, app_dir, _including_dir=None, _seen=()) -> list[str]:
    """argv with every `--flagfile=F` replaced by F's flags (recursively, in order, so later flags still override
    earlier ones). F is looked up by `find_flagfile`."""
    out = []
    args = iter(argv)
    for arg in args:
        if arg in ("--flagfile", "-flagfile"):
            arg = f"--flagfile={next(args, '')}"
        if not arg.startswith(("--flagfile=", "-flagfile=")):
            out.append(arg)
            continue
        name = arg.split("=", 1)[1]
        found = find_flagfile(name, app_dir, _including_dir)
        if found in _seen:
            raise FlagfileError(f"--flagfile={name}: {found} includes itself")
        try:
            lines = found.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FlagfileError(f"--flagfile={name}: cannot read {found} ({e})") from None
        lines = [line.strip() for line in lines]
        lines = [line for line in lines if line and not line.startswith(("#", "//"))]
        out += expand_flagfiles(lines, app_dir, found.parent, (*_seen, found))
    return out


def run_app(main, app_file) -> None:
    """`absl.app.run(main)` with flagfiles looked up beside the app (`--flagfile=adult.flags` from anywhere): the
    app's folder is the one holding `app_file`, its `__file__`, in the checkout or in site-packages alike. Every
    command starts here, so here the process is set up: freed host memory kept for reuse (`sam_jax.host_memory`)."""

    def parse(argv):
        try:
            expanded = [argv[0], *expand_flagfiles(argv[1:], Path(app_file).resolve().parent)]
        except FlagfileError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return app.parse_flags_with_usage(expanded)

    # What the imports made lives as long as the process: kept out of the collector's reach, it is not walked again by
    # the collections while JAX traces (a tiny training run: 8.8 s of CPU instead of 9.7-10.4, 2 cores).
    gc.freeze()
    retain_freed_memory()
    app.run(main, flags_parser=parse)
