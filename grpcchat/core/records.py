"""`record`: the decorator for the project's value types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True)
def record(cls: type[_Record]) -> type[_Record]:
    """A value type: a slotted dataclass, hashable, immutable as far as mypy is concerned.

    Immutability is checked statically (mypy refuses an assignment to a field), not enforced at
    run time: `frozen=True` makes every construction set each field through
    `object.__setattr__` (a `Message` took 1.7 µs to build instead of 0.36, and the server builds
    several per message), and generating its guards cost `grpcchat send` 3 ms of start-up.
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)
