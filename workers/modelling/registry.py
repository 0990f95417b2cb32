"""The one shape of every registry (algorithms, features, regimes, backtest strategies): its entries by
name, in the order they are declared (the order the contract exports them in)."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Named)


def by_name(*entries: E) -> dict[str, E]:
    return {entry.name: entry for entry in entries}
