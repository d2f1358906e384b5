"""Run configurations: frozen pydantic models read from YAML with command-line overrides.

Each pipeline stage defines its own config class on top of :class:`FrozenConfig` (``extra="forbid"``,
so a typo in YAML is an error, and ``frozen``, so a config is never repaired after validation).
:func:`load_config` reads a YAML file, applies ``section.key=value`` overrides (CLI > YAML > default)
and validates once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from flair_deploy.errors import ConfigError

__all__ = ["FrozenConfig", "apply_overrides", "load_config", "read_yaml", "validation_message"]

C = TypeVar("C", bound=BaseModel)


class FrozenConfig(BaseModel):
    """Base of every run config: unknown keys are errors and values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping from *path*.

    Raises:
        ConfigError: If the file is missing, unreadable, not YAML, or not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of *data* with ``dotted.key=value`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: If an override is not of the form ``key=value``.
    """
    out: dict[str, Any] = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {}
                node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def validation_message(exc: ValidationError, *, source: str) -> str:
    """Turn a pydantic error into one line naming the field, the value and the problem."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented keys with --help)"
        parts.append(f"{loc}: {msg}")
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return f"{source}: " + "; ".join(parts) + more


def load_config(
    cls: type[C],
    path: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> C:
    """Build a validated config of type *cls*.

    Precedence: *overrides* > YAML at *path* > *base* > the class defaults.

    Args:
        cls: The config class.
        path: Optional YAML file.
        overrides: ``dotted.key=value`` strings.
        base: Values to start from (e.g. built from command-line flags).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: On any invalid or unknown key, with one line naming it.
    """
    data: dict[str, Any] = _deepcopy(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source=str(path) if path else cls.__name__)) from None


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = _deepcopy(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
