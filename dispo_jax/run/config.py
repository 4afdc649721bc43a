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


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The config's top-level keys, one field each: what runs and the loop's cadence (checked, with
  the messages naming each key, by ``train.validate_config``). Steps count optimizer updates."""

  task: str
  method: str
  reward: str = "default"
  d1_compat: bool = True
  seed: int = 0
  num_steps: int = 1
  max_steps: int = -1
  checkpoint_every: int = 1
  keep_checkpoints: int = 3
  eval_every: int = 0
  eval_rows: int = 256
  max_bad_steps: int = 5
  shuffle_rewards: bool = False
  export_hf: bool = True
  wandb_project: str = ""
  distributed_timeout_s: int = 300

  @property
  def end_step(self) -> int:
    """Where this run stops: ``num_steps``, or ``max_steps`` when that caps it."""
    return self.num_steps if self.max_steps <= 0 else min(self.num_steps, self.max_steps)


# Keys renamed so that "step" means one optimizer update only (old name -> current name). An old
# name is still accepted, with a warning naming the current one: on the command line
# (:func:`current_flags`), in a run folder's recorded ``config.json`` (:func:`current_names`), and
# in an export's or an evaluation's recorded sampler (:func:`current_fields`). Run folders' default
# names hash the keys under their first names (:func:`first_names`), so a rename never moves them.
RENAMED_KEYS = {
    "sampler.steps": "sampler.num_timesteps",
    "rollout.prompts_per_step": "rollout.prompts_per_batch",
    "rl.alpha_step": "rl.alpha_state",
    "rl.step_normaliser": "rl.state_normaliser",
    "rl.step_ratio": "rl.state_ratio",
    "rl.step_tokens": "rl.state_tokens",
}
_FIRST_NAMES = {new: old for old, new in RENAMED_KEYS.items()}

# Keys added after run folders and tiny bases were first keyed, with the default that keeps the
# earlier behaviour (flat dotted names, values as ``config.json`` records them). At that default a
# key stays out of a run folder's hash and a base's cache key, so adding a key never moves them.
ADDED_KEYS = {
    "data.countdown_numbers": [1, 99],
}


def without_added_defaults(flat: Mapping[str, Any]) -> dict:
  """``flat`` (dotted keys) without the :data:`ADDED_KEYS` that hold their added default."""
  return {k: v for k, v in flat.items()
          if not (k in ADDED_KEYS and _as_recorded(v) == ADDED_KEYS[k])}


def section_without_added_defaults(section: str, fields: Mapping[str, Any]) -> dict:
  """One section's fields (``section="data"``: ``{"num_train": 4000, ...}``) without the
  :data:`ADDED_KEYS` that hold their added default."""
  flat = without_added_defaults({f"{section}.{k}": v for k, v in fields.items()})
  return {k[len(section) + 1:]: v for k, v in flat.items()}


def _as_recorded(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def _warn_renamed(old: str, new: str, where: str) -> None:
  from absl import logging
  logging.warning("%s: %s is now called %s; accepted under its old name (rename it)", where, old,
                  new)


def current_names(flat: Mapping[str, Any], where: str) -> dict:
  """``flat`` (dotted keys, as ``config.json`` records them) with every renamed key under its
  current name; ``where`` (the file) is named in the warning."""
  out = {}
  for key, value in flat.items():
    new = RENAMED_KEYS.get(key, key)
    if new != key:
      _warn_renamed(key, new, where)
    out[new] = value
  return out


def first_names(flat: Mapping[str, Any]) -> dict:
  """``flat`` with every renamed key under its first name (the inverse of :func:`current_names`)."""
  return {_FIRST_NAMES.get(key, key): value for key, value in flat.items()}


def current_fields(section: str, fields: Mapping[str, Any], where: str) -> dict:
  """One section's fields (``section="sampler"``: ``{"steps": 6, ...}``) under current names."""
  flat = current_names({f"{section}.{k}": v for k, v in fields.items()}, where)
  return {k[len(section) + 1:]: v for k, v in flat.items()}


def current_flags(argv: list[str], name: str = "config") -> list[str]:
  """``argv`` with every ``--<name>.<old key>`` override under the key's current name."""
  out = []
  for arg in argv:
    flag, sep, value = arg.partition("=")
    old = flag[len(f"--{name}."):] if flag.startswith(f"--{name}.") else ""
    if old in RENAMED_KEYS:
      _warn_renamed(flag, f"--{name}.{RENAMED_KEYS[old]}", "command line")
      arg = f"--{name}.{RENAMED_KEYS[old]}{sep}{value}"
    out.append(arg)
  return out


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


def resolve_config(spec: str):
  """``--config``'s value as a config: ``"sudoku:tiny,spg"`` (a recipe of
  :mod:`dispo_jax.recipes`, from any directory) or ``"configs/sudoku.py:tiny,spg"`` (a config
  file's ``get_config("tiny,spg")``).

  Raises:
    ConfigError: one line naming the file or recipe that does not exist, or the bad variant.
  """
  from dispo_jax import recipes
  path, _, arg = spec.partition(":")
  if path in recipes.RECIPES and not os.path.exists(path):
    try:
      return recipes.get_config(path, arg)
    except ValueError as e:
      raise ConfigError(f"--config={spec}: {e}") from None
  if not os.path.isfile(path):
    raise ConfigError(f"--config={spec}: {path} does not exist (give a config file, "
                      f"configs/<task>.py[:variants], or a recipe name: {', '.join(recipes.RECIPES)})")
  import importlib.util
  module_spec = importlib.util.spec_from_file_location("_dispo_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(arg)
  except ValueError as e:
    raise ConfigError(f"--config={spec}: {e}") from None


def config_sections_help() -> str:
  """The training config's sections and top-level keys, for ``--help``."""
  from dispo_jax import recipes
  c = recipes.base_config()
  sections = [k for k, v in c.items() if hasattr(v, "items")]
  keys = [k for k, v in c.items() if not hasattr(v, "items")]
  return (f"sections: {', '.join(sections)} (each key documented in dispo_jax/recipes.py); "
          f"top-level keys: {', '.join(keys)}")


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
           + " (the keys and their meaning: dispo_jax/recipes.py)")


def _config_parser(name: str):
  from ml_collections.config_flags import config_flags

  class ConfigSpecParser(config_flags.ConfigFileFlagParser):
    """ml_collections' config-file parser that also takes recipe names (:func:`resolve_config`)."""

    def parse(self, spec):
      config = resolve_config(spec)
      if self._lock_config:
        config.lock()
      return config

  return ConfigSpecParser(name=name, lock_config=True)


def define_config_flag(name: str, default: str | None, help_text: str):
  """A locked config flag as ``ml_collections.config_flags.DEFINE_config_file`` defines it, whose
  value is a recipe name or a config file (:func:`resolve_config`). An override of a key the
  config does not have ends in one line naming it — whether ml_collections finds it while the flag
  is defined (the default) or while the command line is parsed (``--config=...``; pass
  :func:`parse_flags` to ``app.run``); it raises a bare ``AttributeError`` or ``KeyError``."""
  from absl import flags
  from ml_collections.config_flags import config_flags
  sys.argv[:] = current_flags(sys.argv, name)  # ml_collections reads overrides from sys.argv
  try:
    flag = config_flags._ConfigFlag(  # noqa: SLF001 - DEFINE_config_file's flag, another parser
        parser=_config_parser(name), serializer=flags.ArgumentSerializer(), name=name,
        default=default, help_string=help_text, flag_values=flags.FLAGS)
    return flags.DEFINE_flag(flag, flags.FLAGS, module_name=sys.argv[0])  # listed by --help
  except (AttributeError, KeyError) as e:
    _unknown_key_exit(e, name, sys.argv)


def parse_flags(argv: list[str]) -> list[str]:
  """``absl.flags.FLAGS(argv)`` for ``app.run(main, flags_parser=parse_flags)``: unknown
  ``--config.<key>`` overrides (see :func:`define_config_flag`) and bad flag values end in one
  line. Renamed keys (:data:`RENAMED_KEYS`) are accepted under their old names."""
  from absl import flags
  argv = current_flags(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_key_exit(e, "config", argv)
  except flags.Error as e:  # absl's "flag --config=<value>: " before resolve_config's own line
    sys.exit("error: " + re.sub(r"^flag --[\w.]+=\S*: (?=--)", "", str(e)))
