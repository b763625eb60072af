"""The run's configuration as recorded: normalised to JSON values (a dict, a dataclass or parsed
arguments in; nested ones and odd values flattened to text), secrets redacted, hashed so that two
runs with the same configuration can be found, and the seed it names."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .record.files import encode
from .redact import Redactor
from .validate import json_safe


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
        digest = hashlib.sha256(encode(values, sort_keys=True)).hexdigest()
        return cls(values=values, hash=f"sha256:{digest}",
                   seed=seed if seed is not None else _seed_from(values), redactor=redactor)


def normalise(config: object) -> dict[str, Any]:
    """``config`` as a dict of JSON values (``traintel.validate.json_safe``: nested dataclasses
    and namespaces as dicts, circular references and depth cut, odd values as text); a clear
    error for what cannot be a configuration."""
    if config is None:
        return {}
    if not (isinstance(config, (Mapping, argparse.Namespace)) or (
            dataclasses.is_dataclass(config) and not isinstance(config, type))):
        raise TypeError(f"traintel.init: config must be a dict, a dataclass instance or an "
                        f"argparse.Namespace, got {type(config).__name__}")
    values: dict[str, Any] = json_safe(config)
    return values


def _seed_from(config: Mapping[str, Any]) -> int | None:
    seed = config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
