"""A map that keeps the latest entries only: what a process remembers to save a read or a
request (jobs it announced, records it wrote, answers it cached), bounded so that it does not
grow with everything the process has seen."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """At most `size` entries: remembering one more forgets the one remembered longest ago."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def remember(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
