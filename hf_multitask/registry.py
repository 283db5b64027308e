"""One registry style for every pluggable kind: task types, aggregators (gradient methods and loss
weightings) and schedules.

A [`Registry`][hf_multitask.registry.Registry] is a ``{name: entry}`` dict with [`Registry.register()`][hf_multitask.registry.Registry.register] and
[`Registry.get_entry()`][hf_multitask.registry.Registry.get_entry]; an unknown name is a `RegistryError` (a ``KeyError`` and a
``ValueError``, so callers of either kind keep working) whose message lists the registered
names, as help texts do ([`Registry.names()`][hf_multitask.registry.Registry.names]).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown name; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(dict, Generic[T]):
    """Registered ``T`` by name (``kind`` names them in messages, e.g. "aggregator")."""

    def __init__(self, kind: str, entries: dict[str, T] | None = None) -> None:
        super().__init__(entries or {})
        self.kind = kind

    def register(self, name: str, entry: T) -> T:
        """Register (or replace) ``entry`` under ``name``; returns the entry (usable in decorators)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty name, got {name!r}")
        self[name] = entry
        return entry

    def get_entry(self, name: Any) -> T:
        """The entry called ``name``, or a `RegistryError` listing the registered names."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise RegistryError(f"Unknown {self.kind} {name!r}; choose from {self.names()}") from None

    def names(self) -> list[str]:
        """The registered names, sorted (for help texts and messages)."""
        return sorted(self)
