"""One loader for every stage's config file: ``load_config(model_cls, path, overrides) -> model``.

Every stage (cache, pairs, train, eval, the pipeline; and any typed settings such as serving's) reads its YAML
through this module, so every config behaves the same:

- one error type, :class:`ConfigError` (a ``ValueError``), and one message format on one line::

      FILE: key.path: problem

  e.g. ``configs/pairs.yaml: reward.lamda: unknown key (did you mean 'lam'?)``. ``FILE`` is ``command line``
  for values given as options. Several problems are joined with ``; `` on the same line.
- unknown keys are refused at every depth: nested pydantic models, pydantic dataclasses (``reward:`` in a pairs
  config) and plain dataclasses, also inside ``list[...]``, ``dict[str, ...]`` and ``X | None`` fields, whatever
  ``extra`` the class itself declares.
- a key given twice in one mapping is refused (YAML itself would silently keep the last one).
- broken YAML is one line naming the file, the line and column, and the problem; never a traceback.
- ``overrides`` (e.g. command-line options) win over the file; ``None`` values are ignored (an option not given).

The command line turns a ``ConfigError`` into ``error: MESSAGE`` on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = [
    "ConfigError",
    "read_yaml",
    "read_yaml_mapping",
    "load_config",
    "validate_config",
    "unknown_keys",
    "format_validation_error",
    "packaged_config",
]

T = TypeVar("T")
COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """A config file (or option) is invalid. ``str(e)`` is one line: ``FILE: key.path: problem``."""

    def __init__(self, where: str | Path, problem: str | None = None, key: str | None = None):
        if problem is None:  # a ready message (the older stage errors' form): ConfigError("FILE: problem")
            self.where, self.key, self.problem = "", None, str(where)
            super().__init__(str(where))
            return
        self.where = str(where)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.where}: {key}: {problem}" if key else f"{self.where}: {problem}")


# ---- YAML ------------------------------------------------------------------------------------------------------------


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in out:
            raise _DuplicateKeyError(
                None, None, f"key {key!r} is given twice in the same mapping (YAML would keep only the last)",
                key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_yaml(path: str | Path, what: str = "config", *, error: type[ConfigError] = ConfigError) -> Any:
    """The content of a YAML file; ``ConfigError`` (one line: file, line, column, problem) if it is missing,
    unreadable, not valid YAML or has a duplicate key."""
    path = Path(path)
    if not path.exists():
        raise error(path, f"{what} file not found")
    if path.is_dir():
        raise error(path, f"is a folder, not a {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(path, f"cannot read the {what} file: {_one_line(e)}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = ": ".join(x for x in (e.context, e.problem) if x)
        if isinstance(e, _DuplicateKeyError):
            raise error(path, f"{where}{_one_line(problem)}") from None
        raise error(path, f"{where}not valid YAML: {_one_line(problem)}") from None
    except yaml.YAMLError as e:
        raise error(path, f"not valid YAML: {_one_line(e)}") from None


def read_yaml_mapping(path: str | Path, what: str = "config", *, error: type[ConfigError] = ConfigError
                      ) -> dict[str, Any]:
    """``read_yaml`` of a file that must hold a mapping (an empty file is ``{}``)."""
    data = read_yaml(path, what, error=error)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(path, f"expected a mapping of key: value at the top, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise error(path, f"keys must be names, got {bad[0]!r}")
    return data


# ---- unknown keys at every depth ---------------------------------------------------------------------------------


def _fields_of(cls: Any) -> dict[str, Any] | None:
    """``name -> annotation`` of a config class (pydantic model, pydantic dataclass, dataclass); None otherwise.
    Aliases count as names too."""
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        out: dict[str, Any] = {}
        for name, f in cls.model_fields.items():
            out[name] = f.annotation
            for alias in (f.alias, f.validation_alias if isinstance(f.validation_alias, str) else None):
                if alias:
                    out[alias] = f.annotation
        return out
    pyd = getattr(cls, "__pydantic_fields__", None)
    if isinstance(cls, type) and pyd is not None and dataclasses.is_dataclass(cls):
        return {name: f.annotation for name, f in pyd.items()}
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:
            hints = {}
        return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}
    return None


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _walk(tp: Any, value: Any, path: str, out: list[tuple[str, str]]) -> None:
    tp = _strip_annotated(tp)
    fields = _fields_of(tp)
    if fields is not None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                here = f"{path}.{key}" if path else str(key)
                if key not in fields:
                    hint = difflib.get_close_matches(str(key), [str(f) for f in fields], n=1, cutoff=0.6)
                    if hint:
                        out.append((here, f"unknown key (did you mean {hint[0]!r}?)"))
                    elif len(fields) <= 12:
                        out.append((here, f"unknown key (known: {', '.join(sorted(map(str, fields)))})"))
                    else:
                        out.append((here, f"unknown key (see {getattr(tp, '__name__', 'the config class')}'s fields)"))
                else:
                    _walk(fields[key], sub, here, out)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        # the first config class among the members decides (``X | None``, ``X | list[X]`` ...)
        for a in args:
            a = _strip_annotated(a)
            if _fields_of(a) is not None and isinstance(value, Mapping):
                _walk(a, value, path, out)
                return
            if typing.get_origin(a) in (list, tuple, set, frozenset, dict) and isinstance(value, (list, dict)):
                if isinstance(value, dict) == (typing.get_origin(a) is dict):
                    _walk(a, value, path, out)
                    return
        return
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)) and args:
        for i, item in enumerate(value):
            _walk(args[0], item, f"{path}.{i}", out)
        return
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        for key, item in value.items():
            _walk(args[1], item, f"{path}.{key}", out)


def unknown_keys(model_cls: Any, data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``[(key.path, problem)]`` for every key of ``data`` that ``model_cls`` (at that depth) does not know."""
    out: list[tuple[str, str]] = []
    _walk(model_cls, data, prefix, out)
    return out


# ---- validation -----------------------------------------------------------------------------------------------------


def format_validation_error(e: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """pydantic's errors as ``[(key.path, problem)]``."""
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        key = ".".join(x for x in (prefix, loc) if x) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err.get("type") == "missing":
            msg = "missing (required)"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err.get("type") not in ("missing",) and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        out.append((key, _one_line(msg)))
    return out


def _raise(where: str, problems: list[tuple[str, str]], error: type[ConfigError]) -> typing.NoReturn:
    first_key, first = problems[0]
    rest = "".join(f"; {k}: {p}" for k, p in problems[1:4])
    more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
    raise error(where, first + rest + more, key=first_key)


def validate_config(model_cls: type[T], data: Mapping[str, Any], where: str | Path = COMMAND_LINE,
                    prefix: str = "", *, error: type[ConfigError] = ConfigError) -> T:
    """``model_cls`` built from ``data``; every problem (unknown keys at every depth first) as one ``error``
    (``ConfigError`` or a stage's subclass of it). ``prefix`` is the key path of ``data`` inside its file."""
    where = str(where)
    if not isinstance(data, Mapping):
        raise error(where, f"expected a mapping of key: value, got {type(data).__name__}", key=prefix or None)
    unknown = unknown_keys(model_cls, data, prefix)
    try:
        if isinstance(model_cls, type) and issubclass(model_cls, BaseModel):
            model = model_cls.model_validate(dict(data))
        else:
            model = TypeAdapter(model_cls).validate_python(dict(data))
    except ValidationError as e:
        seen = {k for k, _ in unknown}
        invalid = [(k, p) for k, p in format_validation_error(e, prefix) if k not in seen]
        _raise(where, invalid + unknown or [(prefix, "invalid")], error)
    except (ValueError, TypeError) as e:  # a plain dataclass's __post_init__
        if unknown:
            _raise(where, unknown, error)
        raise error(where, _one_line(e), key=prefix or None) from None
    if unknown:  # a class that ignores extra keys (pydantic's default): still refused
        _raise(where, unknown, error)
    return model


def load_config(model_cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                *, what: str = "config", error: type[ConfigError] = ConfigError) -> T:
    """Defaults < the YAML file ``path`` (if given) < ``overrides`` whose value is not None.

    Errors name the file when there is one, else ``command line``."""
    data: dict[str, Any] = {}
    where = COMMAND_LINE
    if path is not None:
        data.update(read_yaml_mapping(path, what, error=error))
        where = str(path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    return validate_config(model_cls, data, where, error=error)


def finite(value: float, name: str = "value") -> float:
    """A pydantic-validator helper: refuse NaN and infinities."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


# ---- configs shipped with the package ----------------------------------------------------------------------------


def packaged_config(path: str | Path) -> Path:
    """``configs/NAME`` as given when it exists (relative to the working directory); else the copy shipped inside
    the installed package (``xrouter_lite/configs/NAME``, via importlib.resources), else the source checkout's
    ``configs/NAME``. Any other path is returned unchanged."""
    p = Path(path)
    if p.exists() or p.is_absolute() or len(p.parts) != 2 or p.parts[0] != "configs":
        return p
    try:
        from importlib.resources import files

        res = files("xrouter_lite").joinpath("configs", p.name)
        if res.is_file():
            return Path(str(res))
    except Exception:  # pragma: no cover
        pass
    here = Path(__file__).resolve().parent
    for cand in (here / "configs" / p.name, here.parent / "configs" / p.name):
        if cand.is_file():
            return cand
    return p
