"""Run configurations: frozen pydantic models read from YAML, ``--set`` overrides and command-line flags.

Each pipeline stage defines its own config class on top of :class:`FrozenConfig` (``extra="forbid"``,
so a typo in YAML is an error, and ``frozen``, so a config is never repaired after validation), and one
``load_<command>_config(path, overrides, flags)`` built on :func:`load_config`.

Precedence, the same for every command (highest first)::

    command-line flags  >  --set section.key=value  >  the YAML file (--config)  >  the model defaults

Command-line options default to None ("not given"), so the config models hold the only defaults.
Errors are one line naming where the bad value came from (``--bands``, ``--set optim.lr``, or the YAML
key), the value received and what is allowed; an unknown key suggests the closest known one.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from flair_deploy.errors import ConfigError

if TYPE_CHECKING:
    from flair_deploy.artifacts import Describer

__all__ = [
    "KEYS_DOC",
    "DescribesWeights",
    "FrozenConfig",
    "Loaded",
    "apply_overrides",
    "build_config",
    "closest",
    "load_config",
    "merge_dicts",
    "model_of",
    "read_yaml",
    "resolve_paths",
    "set_dotted",
    "validation_message",
]

C = TypeVar("C", bound=BaseModel)

#: Where every config key is documented (named by unknown-key errors).
KEYS_DOC = "configs/README.md"

# Pydantic loc entries that name a union branch or a validator, not a key (e.g. ``int``,
# ``function-after[...]``, ``constrained-int``).
_TYPE_TAGS = frozenset({"int", "float", "str", "bool", "list", "tuple", "dict", "none", "enum", "literal"})


class FrozenConfig(BaseModel):
    """Base of every run config: unknown keys are errors and values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DescribesWeights(FrozenConfig):
    """The keys of every command that reads a model: what describes weights that carry no description.

    Attributes:
        preset: A description preset (``flair_deploy.artifacts.PRESETS``) for IGN's released weights.
        ign_config: IGN's ``flair-1-config.yaml`` or ``flair-1-config-detect.yaml`` describing IGN-layout
            weights that match no preset (``--config`` with an IGN file sets it). Given with
            ``preset``, the two must agree.
    """

    preset: str | None = None
    ign_config: Path | None = None

    def describer(self) -> Describer | None:
        """Return what describes undescribed weights (see :func:`flair_deploy.ign.describer`).

        Raises:
            ConfigError: If the IGN config is invalid or disagrees with the preset.
        """
        from flair_deploy.ign import describer

        return describer(self.preset, self.ign_config)


class Loaded(NamedTuple, typing.Generic[C]):
    """What a ``load_<command>_config`` returns: the validated config and notes for the user.

    Attributes:
        config: The validated, frozen config.
        notes: One line per input key that was not applied as such (IGN keys with no equivalent).
    """

    config: C
    notes: tuple[str, ...] = ()


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


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"``, creating (or replacing non-mapping) sections."""
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split one ``--set`` item into its dotted key and its value (parsed as YAML).

    Raises:
        ConfigError: If it is not of the form ``key=value``.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} is not of the form section.key=value, e.g. --set optim.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of *data* with ``dotted.key=value`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: If an override is not of the form ``key=value``.
    """
    out = merge_dicts(data, {})
    for item in overrides:
        set_dotted(out, *parse_override(item))
    return out


def merge_dicts(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return *base* recursively updated with *update* (nested mappings merged, other values replaced)."""
    out: dict[str, Any] = {k: (merge_dicts(v, {}) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_dicts(value, {})
        else:
            out[key] = value
    return out


def resolve_paths(data: Mapping[str, Any], folder: Path, keys: Sequence[str]) -> dict[str, Any]:
    """Return *data* with the relative paths under the dotted *keys* made relative to *folder*.

    A value may be one path or a list of paths; absolute paths and ``~`` paths are kept as given.
    """

    def fix(value: Any) -> Any:
        if isinstance(value, str | Path) and str(value):
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (folder / p).resolve())
        if isinstance(value, list | tuple):
            return [fix(v) for v in value]
        return value

    out = merge_dicts(data, {})
    for dotted in keys:
        *sections, key = dotted.split(".")
        node: Any = out
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            node[key] = fix(node[key])
    return out


def closest(word: str, known: Sequence[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of *known* to *word*, or ``""``."""
    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Section``, ``Section | None``, ``Annotated[...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def _known_keys(cls: type[BaseModel] | None, path: Sequence[str]) -> list[str]:
    """Keys valid at *path* (the parent of an unknown key) in *cls*."""
    model = cls
    for part in path:
        if model is None or part not in model.model_fields:
            return []
        model = model_of(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _key_and_index(loc: Sequence[int | str]) -> tuple[str, list[int | str]]:
    """Split a pydantic loc into the dotted config key and what follows it (list indices, dict keys)."""
    keys: list[str] = []
    rest: list[int | str] = []
    for part in loc:
        if isinstance(part, int) or rest:
            rest.append(part)
        elif part in _TYPE_TAGS or "[" in part or "-" in part:
            continue  # a union branch or validator name
        else:
            keys.append(part)
    return ".".join(keys), [p for p in rest if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(
    exc: ValidationError,
    *,
    source: str,
    cls: type[BaseModel] | None = None,
    origins: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> str:
    """Turn a pydantic error into one line naming where each bad value came from, the value and the rule.

    Args:
        exc: The validation error.
        source: What was being read (a YAML path or a config name), for keys not given on the command line.
        cls: The config class, to suggest the closest known key for an unknown one.
        origins: Dotted key → how the user gave it (``--bands``, ``--set data.bands``, an IGN key), for
            values that did not come from *source*.
        flag_names: Dotted key → the option that sets it, to say how to give a missing value.

    Returns:
        One line; never a pydantic loc such as ``bands.0`` nor a link to pydantic's documentation.
    """
    origins = origins or {}
    seen: set[str] = set()
    errors = []
    for err in exc.errors(include_url=False):
        key, rest = _key_and_index(err["loc"])
        if key not in seen:  # one problem per key (pydantic may add a consequence, e.g. "too short")
            seen.add(key)
            errors.append((err, key, rest))
    parts = []
    for err, key, rest in errors[:3]:
        # The most specific origin: `--set data={...}` is where a bad data.train_csv came from.
        parts_of_key = key.split(".")
        prefixes = [".".join(parts_of_key[:i]) for i in range(len(parts_of_key), 0, -1)]
        given = next((origins[k] for k in prefixes if k in origins), None)
        where = (given if given == origins.get(key) else f"{given} ({key})") if given else None
        where = where or (f"{source}: {key}" if key else source)
        item = f" item {int(rest[0]) + 1}" if rest and isinstance(rest[0], int) else ""
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            parent, _, leaf = key.rpartition(".")
            hint = closest(leaf, _known_keys(cls, parent.split(".") if parent else []))
            parts.append(f"{where}: unknown key{hint}; the keys are documented in {KEYS_DOC}")
        elif err["type"] == "missing":
            flag = (flag_names or {}).get(key)
            how = f"give {flag} (or {key}: in --config)" if flag else f"set {key}"
            parts.append(f"{source}: {key} is required but not given; {how}")
        elif not key:
            parts.append(f"{source}: {msg}")
        else:
            got = f" (got {_short(err['input'])})" if "input" in err else ""
            parts.append(f"{where}{item}: {msg[:1].lower()}{msg[1:]}{got}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def build_config(
    cls: type[C],
    data: Mapping[str, Any],
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
    flag_names: Mapping[str, str] | None = None,
    origins: Mapping[str, str] | None = None,
) -> C:
    """Validate *data* (already read from YAML) with *overrides* and *flags* on top.

    Args:
        cls: The config class.
        data: Nested values from the YAML file (and anything below it).
        overrides: ``dotted.key=value`` strings (``--set``).
        flags: Dotted key → value from command-line options; None values (option not given) are skipped.
        source: Name of the YAML file or config, for messages.
        flag_names: Dotted key → the option that sets it (``--tile``), for messages.
        origins: Dotted key → where the YAML value came from, when not the key itself (IGN keys).

    Raises:
        ConfigError: One line naming the key or option, the value and what is allowed.
    """
    where: dict[str, str] = dict(origins or {})
    out = merge_dicts(data, {})
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(out, key, value)
        where[key] = f"--set {key}"
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(out, key, value)
            where[key] = (flag_names or {}).get(key, key)
    try:
        return cls.model_validate(out)
    except ValidationError as exc:
        raise ConfigError(
            validation_message(
                exc, source=source or cls.__name__, cls=cls, origins=where, flag_names=flag_names
            )
        ) from None


def load_config(
    cls: type[C],
    path: Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
    path_keys: Sequence[str] = (),
) -> C:
    """Build a validated config of type *cls*.

    Precedence: *flags* > *overrides* > YAML at *path* > *base* > the class defaults.

    Args:
        cls: The config class.
        path: Optional YAML file.
        overrides: ``dotted.key=value`` strings.
        flags: Dotted key → value from command-line options (None: not given).
        base: Values to start from, below the YAML file.
        flag_names: Dotted key → the option that sets it, for messages.
        path_keys: Dotted keys holding paths: relative ones in the YAML file are relative to its
            folder (so a config and its files travel together); flags stay relative to the cwd.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: On any invalid or unknown key, with one line naming it.
    """
    data = merge_dicts(base or {}, {})
    if path is not None:
        data = merge_dicts(data, resolve_paths(read_yaml(path), path.resolve().parent, path_keys))
    return build_config(
        cls, data, overrides, flags, source=str(path) if path else None, flag_names=flag_names
    )
