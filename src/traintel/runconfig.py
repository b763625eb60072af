"""The run's configuration as recorded: normalised to JSON values (a dict, a dataclass or parsed
arguments in; nested ones and odd values flattened to text), secrets redacted, hashed so that two
runs with the same configuration can be found, and the seed it names."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .record.files import encode
from .redact import Scrubber, secret_values
from .state import nonfinite_text


@dataclass(frozen=True)
class RunConfig:
    #: the configuration as written to config.json and the record: JSON values, redacted
    values: dict[str, Any]
    #: ``sha256:`` of the values with sorted keys: equal configurations hash equally
    hash: str
    seed: int | None
    #: scrubs the configuration's secrets (and the environment's) out of everything written
    scrubber: Scrubber

    @classmethod
    def from_input(cls, config: object, seed: int | None = None) -> RunConfig:
        plain = normalise(config)
        scrubber = Scrubber(secret_values(plain))
        values: dict[str, Any] = scrubber.deep(plain)
        digest = hashlib.sha256(encode(values, sort_keys=True)).hexdigest()
        return cls(values=values, hash=f"sha256:{digest}",
                   seed=seed if seed is not None else _seed_from(values), scrubber=scrubber)


def normalise(config: object) -> dict[str, Any]:
    """``config`` as a dict of JSON values; a clear error for what cannot be a configuration."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return {str(k): _value(v) for k, v in config.items()}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return normalise(dataclasses.asdict(config))
    if isinstance(config, argparse.Namespace):
        return normalise(vars(config))
    raise TypeError(f"traintel.init: config must be a dict, a dataclass instance or an "
                    f"argparse.Namespace, got {type(config).__name__}")


def _value(value: object) -> Any:
    if isinstance(value, Mapping) or isinstance(value, argparse.Namespace) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return normalise(value)
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_text(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _seed_from(config: Mapping[str, Any]) -> int | None:
    seed = config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None
