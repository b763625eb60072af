"""JSON in and out of a run's directory: the encoder every record line and document goes through,
and the atomic writer and tolerant reader of ``config.json``, ``summary.json`` and
``crash-report.json``."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import orjson

from ..state import nonfinite_text

log = logging.getLogger("traintel.record")


def encode(value: Any, *, sort_keys: bool = False, indent: bool = False) -> bytes:
    """JSON bytes for anything traintel writes: orjson first, the stdlib for what orjson
    refuses (integers beyond 64 bits), ``str()`` for objects neither knows."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0) | (
        orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, option=option, default=_json_default)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(_text_for_nonfinite(value), default=_json_default, ensure_ascii=False,
                          allow_nan=False, sort_keys=sort_keys, indent=2 if indent else None
                          ).encode("utf-8", "surrogatepass")


def _text_for_nonfinite(value: Any) -> Any:
    """NaN/Inf as "nan"/"inf" text, as the record format says (orjson would write null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_text(value)
    if isinstance(value, dict):
        return {k: _text_for_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text_for_nonfinite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """Last resort for values orjson does not know (paths, sets, tensors in user fields)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def write_json(path: Path, data: Any, quiet: bool = False) -> bool:
    """Write ``path`` atomically (temp file + rename); a failure is a warning, not an error."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encode(data, indent=True))
        os.replace(tmp, path)
        return True
    except OSError as exc:
        if not quiet:
            log.warning("traintel could not write %s: %s", path, exc)
        return False


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or torn."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
