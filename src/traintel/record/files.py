"""JSON in and out of a run's directory: the encoder every record line and document goes through,
and the atomic writer and tolerant reader of ``config.json``, ``summary.json`` and
``crash-report.json``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from traintel.core.validate import json_safe

log = logging.getLogger("traintel.record")


def encode(value: Any, *, sort_keys: bool = False, indent: bool = False) -> bytes:
    """JSON bytes for anything traintel writes. orjson first; what it refuses (an integer beyond
    64 bits, text with lone surrogates, nesting deeper than 255, a circular reference) is made
    JSON-safe by :func:`traintel.core.validate.json_safe` and encoded again, so that one odd value
    costs that value, not its line."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0) | (
        orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, option=option, default=_json_default)
    except (TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return orjson.dumps(json_safe(value), option=option)


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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content (config.json, summary.json, crash-report.json), or None when
    it is missing, unreadable, torn, nested beyond reason or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
