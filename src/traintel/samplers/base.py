"""What a sampler is: a name, ``sample()`` returning readings named by the catalog, ``close()``.

Kept apart from the package's ``__init__`` (the sampler thread) so that each sampler module
imports only this, never the package that imports it."""

from __future__ import annotations

from typing import Protocol

#: (catalog metric name, value, extra labels beyond project/run/rank).
Reading = tuple[str, float, dict[str, str]]


class Sampler(Protocol):
    name: str

    def sample(self) -> list[Reading]:
        """Current readings; may raise (the thread handles it)."""
        ...

    def close(self) -> None:
        ...
