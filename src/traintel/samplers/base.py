"""What a sampler is: a name, ``sample()`` returning readings named by the catalog, ``close()``;
and what a sampler that also sees events (an NVIDIA Xid error) hands over besides.

Kept apart from the package's ``__init__`` (the sampler thread) so that each sampler module
imports only this, never the package that imports it."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from traintel.core.vocabulary import Level

#: one sampled value: (catalog metric name, value, extra labels beyond project/run/rank); the
#: export side's ``traintel.export.readings.Reading`` is a value read from the state, without a name
Sample = tuple[str, float, dict[str, str]]


class SamplerEvent(NamedTuple):
    """Something that happened between two samples, for the run's record and logs
    (``run.event(name, level, **fields)``)."""

    name: str
    level: Level
    fields: dict[str, str | int | float]


class Sampler(Protocol):
    name: str

    def sample(self) -> list[Sample]:
        """Current readings; may raise (the thread handles it)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class EventSource(Protocol):
    """A sampler that also notices events; the thread collects them after each sample."""

    def events(self) -> list[SamplerEvent]:
        """The events seen since the last call (then forgotten); never raises."""
        ...
