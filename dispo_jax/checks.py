"""The one way a settings dataclass reports a bad field (used by every ``__post_init__`` table)."""

from __future__ import annotations

from typing import Any, Iterable


def require(settings: Any, checks: Iterable[tuple[str, bool, str]]) -> None:
  """Raises ``ValueError("<field>=<value> must be <what>")`` for the first failed check.

  Args:
    settings: the dataclass instance whose fields are checked.
    checks: ``(field name, whether it is valid, what it must be)`` triples.
  """
  for name, ok, what in checks:
    if not ok:
      raise ValueError(f"{name}={getattr(settings, name)!r} must be {what}")
