"""A name -> function table with a registering decorator (losses, advantage estimators)."""

from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Dict[str, F], Generic[F]):
  """``@registry.register("name")`` adds a function; ``registry.get("name")`` names what exists."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind

  def register(self, name: str) -> Callable[[F], F]:
    def wrap(fn: F) -> F:
      if name in self:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self[name] = fn
      return fn
    return wrap

  def get(self, name: str) -> F:  # type: ignore[override]
    if name not in self:
      raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
    return self[name]
