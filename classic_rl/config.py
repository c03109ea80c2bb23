"""Config resolution: dataclass defaults <- configs/classic/<algo>.yaml <- --config FILE <- --set.

Every agent declares its settings as a dataclass (``Agent.Config``). The YAML file of an
algorithm holds a ``default:`` section and an ``envs:`` section keyed by env id, so tuned
hyperparameters are picked automatically by env id with a generic fallback::

    default:            # every env
      learning_rate: 3.0e-4
    envs:
      CartPole-v1:      # overrides for this env only
        n_steps: 32
    atari:              # optional: every Atari game id not listed under envs
      buffer_size: 100000

Unknown keys are errors that name the valid keys, at every layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

from classic_rl.safe_io import ConfigError, UserError, read_yaml  # noqa: F401  (both re-exported for callers)

CONFIG_ROOT = Path(os.environ.get("CLASSIC_RL_CONFIGS", Path(__file__).resolve().parents[1] / "configs" / "classic"))


def field_names(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)]


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown setting {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(valid))}."


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn YAML/CLI values into the field's type (YAML reads '1e-3' as a string)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and len(args) < len(typing.get_args(annotation)):
            return None
        for arg in args:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"Setting {key!r}: cannot use {value!r} as {annotation}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"Setting {key!r} needs true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"Setting {key!r} needs an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Setting {key!r} needs an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"Setting {key!r} needs an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Setting {key!r} needs a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Setting {key!r} needs a list, got {value!r}")
        (inner, *_) = typing.get_args(annotation) or (Any,)
        items = [v if inner is Any else _coerce(v, inner, key) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"Setting {key!r} needs a mapping, got {value!r}")
        return dict(value)
    return value


def rename_deprecated(config_cls: type, overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """``overrides`` with old setting names (the config class's ``renamed``: old -> new) replaced,
    warning once per old name; giving both the old and the new name is an error."""
    renamed: dict[str, str] = getattr(config_cls, "renamed", {})
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        new = renamed.get(key)
        if new is None:
            out[key] = value
            continue
        if new in overrides:
            raise ConfigError(f"{where}: {key!r} is the old name of {new!r}; give only {new!r}")
        warnings.warn(f"{where}: setting {key!r} is deprecated, use {new!r}", FutureWarning, stacklevel=3)
        out[new] = value
    return out


def apply_overrides(config: Any, overrides: dict[str, Any], where: str) -> Any:
    """Return a copy of ``config`` with ``overrides`` applied, validating keys and types."""
    overrides = rename_deprecated(type(config), overrides, where)
    valid = field_names(type(config))
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, value in overrides.items():
        if key not in valid:
            raise ConfigError(_unknown_key_message(key, valid, where))
        changes[key] = _coerce(value, hints[key], key)
    config = dataclasses.replace(config, **changes)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of settings, got {type(data).__name__}")
    return data


def is_atari_name(env_id: str) -> bool:
    """Whether ``env_id`` names an Arcade Learning Environment game (``ALE/Pong-v5``, ``PongNoFrameskip-v4``).

    By name, so the tuned settings resolve without importing ale-py (the env itself needs it).
    """
    return env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4")


def defaults_for(algo: str, env_id: str, root: Path | None = None) -> dict[str, Any]:
    """The tuned settings of ``algo`` for ``env_id``: the file's ``default`` merged with ``envs[env_id]``,
    or, for an Atari game not listed there, with the file's ``atari`` section."""
    path = Path(root or CONFIG_ROOT) / f"{algo}.yaml"
    if not path.is_file():
        return {}
    data = load_yaml(path)
    merged = dict(data.get("default") or {})
    envs = data.get("envs") or {}
    name = env_id.partition(":")[2]  # MODULE:NAME (env_utils.import_env_module): NAME's settings
    if env_id in envs:
        merged.update(envs[env_id] or {})
    elif name in envs:
        merged.update(envs[name] or {})
    elif is_atari_name(env_id):
        merged.update(data.get("atari") or {})
    return merged


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "hidden=[64,64]"]`` -> ``{"lr": "1e-3"->..., "hidden": [64, 64]}`` (YAML values)."""
    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        result[key] = yaml.safe_load(raw) if raw.strip() else ""
    return result


def resolve_config(
    config_cls: type,
    algo: str,
    env_id: str,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Build the final config for a run, layer by layer (see the module docstring)."""
    config = config_cls()
    config = apply_overrides(config, defaults_for(algo, env_id), f"configs/classic/{algo}.yaml")
    if config_file is not None:
        data = load_yaml(config_file)
        # A saved run's config.yaml nests the settings under "config"; accept both shapes.
        data = data.get("config", data) if isinstance(data.get("config"), dict) else data
        try:
            config = apply_overrides(config, data, str(config_file))
        except ValueError as err:  # name the file for range errors too
            message = str(err)
            raise ConfigError(message if str(config_file) in message else f"{config_file}: {message}") from None
    if overrides:
        config = apply_overrides(config, overrides, "--set / keyword overrides")
    return config


def to_dict(config: Any) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
