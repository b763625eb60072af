"""The run's configuration as recorded: normalised to JSON values (a dict, a dataclass or parsed
arguments in; nested ones and odd values flattened to text), secrets redacted, hashed so that two
runs with the same configuration can be found, and the seed it names."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from traintel.core.redact import Redactor, secret_values
from traintel.core.validate import json_safe
from traintel.record.files import encode


@dataclass(frozen=True)
class RunConfig:
    #: the configuration as written to config.json and the record: JSON values, redacted
    values: dict[str, Any]
    #: ``sha256:`` of the values with sorted keys: equal configurations hash equally
    hash: str
    seed: int | None
    #: redacts the configuration's secrets (and the environment's) out of everything written
    redactor: Redactor

    @classmethod
    def from_input(cls, config: object, seed: int | None = None) -> RunConfig:
        plain = normalise(config)
        redactor = Redactor.for_config(plain)
        values: dict[str, Any] = redactor.deep(plain)
        return cls(
            values=values,
            hash=_hash(values),
            seed=seed if seed is not None else _seed_from(values),
            redactor=redactor,
        )

    def extended(self, more: object, allow_change: bool = False) -> tuple[RunConfig, list[str]]:
        """This configuration with ``more`` added (its secrets join the redactor), and the keys
        that are new or changed. Changing a value already recorded needs ``allow_change``."""
        plain = normalise(more)
        self.redactor.add(secret_values(plain, environ={}))
        added: dict[str, Any] = self.redactor.deep(plain)
        changed = [k for k, v in added.items() if k in self.values and self.values[k] != v]
        if changed and not allow_change:
            raise ValueError(
                f"run.config.update: {', '.join(map(repr, changed))} already "
                "recorded with another value; pass allow_change=True to change a "
                "recorded value (the record keeps both)"
            )
        values = {**self.values, **added}
        return (
            RunConfig(values, _hash(values), self.seed, self.redactor),
            [k for k, v in added.items() if self.values.get(k, _MISSING) != v],
        )


_MISSING = object()


def _hash(values: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(encode(values, sort_keys=True)).hexdigest()


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The dotted keys (``optimizer.lr``) that were added, removed or changed."""
    old, new = dict(_flat(before)), dict(_flat(after))
    return sorted(
        key for key in old.keys() | new.keys() if old.get(key, _MISSING) != new.get(key, _MISSING)
    )


def _flat(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class ConfigView(Mapping[str, Any]):
    """``run.config``: the recorded configuration, read like a dict, extended after
    ``traintel.init`` with ``run.config.update({...})`` or ``run.config["key"] = value`` (as in
    W&B). Each change is a ``config`` line naming the keys and a ``config_update`` event, and
    config.json gets the new configuration and a history entry; the run's config hash follows."""

    def __init__(
        self, config: RunConfig, on_change: Callable[[RunConfig, list[str]], None]
    ) -> None:
        self.current = config
        self._on_change = on_change

    def __getitem__(self, key: str) -> Any:
        return self.current.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.current.values)

    def __len__(self) -> int:
        return len(self.current.values)

    def __repr__(self) -> str:
        return f"ConfigView({self.current.values!r})"

    def update(self, values: object = None, /, allow_change: bool = False, **more: Any) -> None:
        """Add keys (a dict, dataclass or argparse.Namespace, and/or keywords); changing a
        recorded value needs ``allow_change=True``."""
        merged = {**normalise(values), **more}
        if not merged:
            return
        config, changed = self.current.extended(merged, allow_change)
        if changed:
            self.current = config
            self._on_change(config, changed)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})


def normalise(config: object) -> dict[str, Any]:
    """``config`` as a dict of JSON values (``traintel.core.validate.json_safe``: nested dataclasses
    and namespaces as dicts, circular references and depth cut, odd values as text); a clear
    error for what cannot be a configuration."""
    if config is None:
        return {}
    if not (
        isinstance(config, (Mapping, argparse.Namespace))
        or (dataclasses.is_dataclass(config) and not isinstance(config, type))
    ):
        raise TypeError(
            f"traintel.init: config must be a dict, a dataclass instance or an "
            f"argparse.Namespace, got {type(config).__name__}"
        )
    values: dict[str, Any] = json_safe(config)
    return values


def _seed_from(config: Mapping[str, Any]) -> int | None:
    seed = config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
