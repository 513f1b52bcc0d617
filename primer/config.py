"""Typed, layered configuration: each component owns a pydantic section, runs are presets.

One loader works for any :class:`ConfigModel` subclass. Layers, lowest to highest:

1. field defaults, then *service variables* a model declares in ``env_defaults``
   (``PRIMER_DATA`` → ``storage.root``, ``PRIMER_REDIS_URL`` → ``redis.url``);
2. ``base``: a preset (a model instance or a dict), e.g. ``phi1_small()``;
3. the YAML file;
4. environment variables ``PRIMER_<SECTION>__<KEY>=value`` (``__`` nests, case-insensitive;
   ``PRIMER__<KEY>`` sets a root-level field). Only names containing ``__`` are config;
   a variable whose first segment names no field of the model is left alone, because it
   belongs to another component's config living in the same environment;
5. overrides ``--section.key=value`` (or ``section.key=value``) from the command line.

Env and override values are parsed as YAML scalars (``3``, ``true``, ``[a, b]``), except
where the target field is a string, which keeps the text verbatim (so ``on`` or ``0123``
stay strings). Every problem in every layer is reported at once in one :class:`ConfigError`
naming the dotted key, the layer it came from and what was wrong.

>>> cfg = load_config(CoreConfig, "run.yaml", overrides=["--redis.url=redis://r:6379/1"])
>>> config_hash(cfg)  # recorded in dataset manifests
'3f1c…'
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ConfigError", "ConfigModel", "CoreConfig", "RedisConfig", "StorageConfig",
    "config_hash", "dump_config", "load_config", "parse_override", "undocumented_fields",
]

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str, ...]

ENV_PREFIX = "PRIMER"
COMMAND_LINE = "command line"


class ConfigError(ValueError):
    """A config could not be loaded; the message names every bad key and where it came from."""


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys and wrong types fail, also on assignment.

    ``env_defaults`` maps a field name to a service variable (``PRIMER_DATA``) whose value,
    when set, replaces the field's default; YAML, ``PRIMER_X__Y`` variables and overrides
    still win over it.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    env_defaults: ClassVar[Mapping[str, str]] = {}


# -- the core's own sections ------------------------------------------------------------------


class StorageConfig(ConfigModel):
    """Where datasets, checkpoints and reports live."""

    env_defaults: ClassVar[Mapping[str, str]] = {"root": "PRIMER_DATA"}
    root: str = Field("./primer-data", description=(
        "Data root URI: a path, file:///abs/path or s3://bucket/prefix (S3 endpoint and "
        "credentials come from the environment). Default from PRIMER_DATA."))


class RedisConfig(ConfigModel):
    """The Celery broker / result backend; the embedded mode needs none."""

    env_defaults: ClassVar[Mapping[str, str]] = {"url": "PRIMER_REDIS_URL"}
    url: str = Field("redis://localhost:6379/0", description=(
        "Redis URL used by the cluster mode's work queue. Default from PRIMER_REDIS_URL."))


class CoreConfig(ConfigModel):
    """The sections every Primer process shares; components nest these beside their own."""

    storage: StorageConfig = Field(default_factory=StorageConfig,
                                   description="Object storage for every input and output.")
    redis: RedisConfig = Field(default_factory=RedisConfig,
                               description="Work queue connection (cluster mode).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level of log records that are emitted.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


# -- loading ----------------------------------------------------------------------------------


def load_config(
    model_cls: type[M],
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    base: BaseModel | Mapping[str, Any] | None = None,
) -> M:
    """Build ``model_cls`` from defaults < ``base`` < YAML ``path`` < ``env`` < ``overrides``.

    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` listing every bad key.
    """
    env = os.environ if env is None else env
    layers = _Layers()
    problems: list[str] = []

    layers.add_env_defaults(model_cls, env)
    if base is not None:
        data = base.model_dump(exclude_unset=True) if isinstance(base, BaseModel) else base
        layers.add_tree(dict(data), "preset")
    if path is not None:
        layers.add_tree(_read_yaml(path), str(path))
    for name, key_path in _config_env_vars(model_cls, env):
        layers.add(key_path, _parse_value(model_cls, key_path, env[name]), f"env {name}")
    for arg in overrides:
        try:
            key_path, raw = parse_override(arg)
        except ConfigError as e:
            problems.append(str(e))
            continue
        layers.add(key_path, _parse_value(model_cls, key_path, raw), f"{COMMAND_LINE} ({arg})")

    try:
        model = model_cls.model_validate(layers.data)
    except ValidationError as e:
        problems += [_describe(model_cls, err, layers) for err in e.errors()]
    if problems:
        raise ConfigError(f"invalid {model_cls.__name__} config:\n"
                          + "\n".join(f"  - {p}" for p in problems))
    return model


def parse_override(arg: str) -> tuple[KeyPath, str]:
    """Split ``--section.key=value`` into ``(("section", "key"), "value")``."""
    body = arg.removeprefix("--")
    key, sep, value = body.partition("=")
    parts = tuple(key.split("."))
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"{arg!r}: overrides look like --section.key=value [{COMMAND_LINE}]")
    return tuple(p.strip() for p in parts), value


def config_hash(model: BaseModel) -> str:
    """A stable 16-hex-digit digest of the config's values (key order does not matter)."""
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def dump_config(model: BaseModel) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal model."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def undocumented_fields(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of fields without a ``description``, recursively (for tests)."""
    missing = []
    for name, field in model_cls.model_fields.items():
        if not field.description:
            missing.append(prefix + name)
        sub = _submodel(field.annotation)
        if sub is not None:
            missing += undocumented_fields(sub, f"{prefix}{name}.")
    return missing


# -- internals --------------------------------------------------------------------------------


class _Layers:
    """The merged raw data plus, for every key path set, the layer that set it last."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources: dict[KeyPath, str] = {}

    def add(self, path: KeyPath, value: Any, source: str) -> None:
        node = self.data
        for i, part in enumerate(path[:-1]):
            if not isinstance(node.get(part), dict):
                node[part] = {}
                self.sources[path[:i + 1]] = source
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            for k, v in value.items():
                self.add((*path, str(k)), v, source)
            return
        node[path[-1]] = value
        self._forget_below(path)
        self.sources[path] = source
        if isinstance(value, dict):
            self._record(path, value, source)

    def add_tree(self, tree: Mapping[str, Any], source: str) -> None:
        for key, value in tree.items():
            self.add((str(key),), value, source)

    def add_env_defaults(self, model_cls: type[BaseModel], env: Mapping[str, str],
                         prefix: KeyPath = ()) -> None:
        for field, var in getattr(model_cls, "env_defaults", {}).items():
            if var in env:
                self.add((*prefix, field), env[var], f"env {var}")
        for name, info in model_cls.model_fields.items():
            sub = _submodel(info.annotation)
            if sub is not None:
                self.add_env_defaults(sub, env, (*prefix, name))

    def source_of(self, loc: Sequence[Any]) -> str:
        path = tuple(str(p) for p in loc)
        for n in range(len(path), 0, -1):
            if path[:n] in self.sources:
                return self.sources[path[:n]]
        return "defaults"

    def _record(self, path: KeyPath, tree: dict, source: str) -> None:
        for k, v in tree.items():
            self.sources[(*path, str(k))] = source
            if isinstance(v, dict):
                self._record((*path, str(k)), v, source)

    def _forget_below(self, path: KeyPath) -> None:
        for p in [p for p in self.sources if len(p) > len(path) and p[:len(path)] == path]:
            del self.sources[p]


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, "
                          f"not a {type(data).__name__}")
    return data


def _config_env_vars(model_cls: type[BaseModel], env: Mapping[str, str]):
    """Yield ``(VAR, key_path)`` for each ``PRIMER_A__B`` variable aimed at this model."""
    fields = {name.lower() for name in model_cls.model_fields}
    for name in sorted(env):
        parts = name.split("__")
        head = parts[0].upper()
        if len(parts) < 2 or not (head == ENV_PREFIX or head.startswith(ENV_PREFIX + "_")):
            continue
        first = [] if head == ENV_PREFIX else [parts[0][len(ENV_PREFIX) + 1:]]
        key_path = tuple(p.lower() for p in first + parts[1:])
        if key_path and all(key_path) and key_path[0] in fields:
            yield name, key_path


def _parse_value(model_cls: type[BaseModel], path: KeyPath, raw: str) -> Any:
    """YAML-parse ``raw`` unless the target field is a plain string."""
    if _is_str_field(model_cls, path):
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw  # let validation report it against the field's type


def _field_at(model_cls: type[BaseModel], path: Sequence[Any]):
    """The pydantic ``FieldInfo`` at a key path, or None where the path leaves the models."""
    cls: type[BaseModel] | None = model_cls
    field = None
    for part in path:
        if cls is None or str(part) not in cls.model_fields:
            return None
        field = cls.model_fields[str(part)]
        cls = _submodel(field.annotation)
    return field


def _is_str_field(model_cls: type[BaseModel], path: KeyPath) -> bool:
    field = _field_at(model_cls, path)
    if field is None:
        return False
    args = [a for a in _union_args(field.annotation) if a is not type(None)]
    return bool(args) and all(a is str for a in args)


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for arg in _union_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _describe(model_cls: type[BaseModel], err: Mapping[str, Any], layers: _Layers) -> str:
    """One line for one validation error: key, problem, and the layer it came from."""
    loc = [p for p in err["loc"] if not str(p).startswith("function-")]
    key = ".".join(str(p) for p in loc) or "<root>"
    where = layers.source_of(loc)
    if err["type"] == "extra_forbidden":
        parent = model_cls if len(loc) == 1 else _field_at(model_cls, loc[:-1])
        parent_cls = parent if len(loc) == 1 else parent and _submodel(parent.annotation)
        known = list(parent_cls.model_fields) if parent_cls else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=3)
        hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close
                else f"; known keys: {', '.join(known)}" if known else "")
        return f"{key}: unknown key{hint} [{where}]"
    if err["type"] == "missing":
        return f"{key}: required key is missing [{where}]"
    field = _field_at(model_cls, loc)
    expected = f"expected {_type_name(field.annotation)}, " if field is not None else ""
    return f"{key}: {expected}got {err.get('input')!r}: {err['msg']} [{where}]"
