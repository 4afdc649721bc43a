"""Config sections -> settings dataclasses, one key per field.

Every section of a run's config (``sampler``, ``rollout``, ``rl`` with ``rl.spg`` / ``rl.trace``,
``optim``, ``lora``) constructs its dataclass directly: the config key *is* the field name, a
nested section becomes a nested dataclass, and the dataclass's ``__post_init__`` is the one place
its values are validated. Adding a hyperparameter touches the dataclass and the config table.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A bad configuration value; the message names the config key."""


def _as_dict(section: Any) -> dict:
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _nested_type(field: dataclasses.Field):
  """The dataclass type of a field whose default is a dataclass instance (a nested section)."""
  if field.default_factory is not dataclasses.MISSING:
    default = field.default_factory()
    if dataclasses.is_dataclass(default):
      return type(default)
  return None


def settings_from(cls: type[T], section: Mapping | Any, path: str, exclude: Iterable[str] = (),
                  **derived) -> T:
  """``cls(**section, **derived)`` with nested sections built recursively.

  Args:
    cls: a dataclass.
    section: a ``ConfigDict`` (or mapping) whose keys are ``cls``'s fields.
    path: the section's name in the config (``"rl"``), for error messages.
    exclude: keys of the section that are not fields (e.g. ``lora.enabled``).
    derived: fields that come from elsewhere (the model's MASK id, the sampler's steps).
  Raises:
    ConfigError: naming ``config.<path>.<key>`` for an unknown key, a non-finite float (no
      setting means anything by ``inf`` or ``nan``) or an invalid value.
  """
  values = {k: v for k, v in _as_dict(section).items() if k not in set(exclude)}
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields or key in derived:
      settable = sorted(set(fields) - set(derived))
      raise ConfigError(f"config.{path}.{key} is not a setting of {cls.__name__} "
                        f"(its keys: {', '.join(settable)})")
  for key, value in values.items():
    nested = _nested_type(fields[key])
    if nested is not None:
      values[key] = settings_from(nested, value, f"{path}.{key}")
  if isinstance(values.get("targets"), list):
    values["targets"] = tuple(values["targets"])
  for key, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{path}: {key}={value!r} must be finite")
  try:
    return cls(**values, **derived)
  except (TypeError, ValueError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"config.{path}: {e}") from None


def load_config(spec: str):
  """``"configs/sudoku.py:tiny,spg"`` -> that file's ``get_config("tiny,spg")`` (as the CLIs'
  ``--config`` flag reads it)."""
  import importlib.util
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: config file does not exist")
  module_spec = importlib.util.spec_from_file_location("_dispo_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module.get_config(arg)


def _unknown_key_exit(error: Exception, name: str, argv: list[str]):
  """Exits with one line naming the ``--<name>.<key>`` override whose key the config lacks."""
  found = re.search(r"[A-Za-z_][A-Za-z0-9_]*", str(error))
  key = found.group(0) if found else str(error)
  hint = re.search(r"Did you mean \"([^\"]+)\"", str(error))
  given = next((a.split("=", 1)[0] for a in argv[1:]
                if a.startswith(f"--{name}.") and key in a.split("=", 1)[0].split(".")),
               f"--{name}.{key}")
  sys.exit(f"error: {given}: the config has no key {key!r}"
           + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
           + " (the keys and their meaning: configs/common.py)")


def define_config_flag(name: str, default: str | None, help_text: str):
  """``ml_collections.config_flags.DEFINE_config_file`` (locked). An override of a key the config
  does not have ends in one line naming it — whether ml_collections finds it while the flag is
  defined (the default file) or while the command line is parsed (``--config=...``; pass
  :func:`parse_flags` to ``app.run``); it raises a bare ``AttributeError`` or ``KeyError``."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except (AttributeError, KeyError) as e:
    _unknown_key_exit(e, name, sys.argv)


def parse_flags(argv: list[str]) -> list[str]:
  """``absl.flags.FLAGS(argv)`` for ``app.run(main, flags_parser=parse_flags)``, unknown
  ``--config.<key>`` overrides ending in one line (see :func:`define_config_flag`)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_key_exit(e, "config", argv)
