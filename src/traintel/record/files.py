"""JSON in and out of a run's directory: the encoder every record line and document goes through,
and the atomic writer and tolerant reader of ``config.json``, ``summary.json`` and
``crash-report.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import orjson

from traintel.core.validate import json_safe
from traintel.record import safe

log = logging.getLogger("traintel.record")
#: the most a JSON document beside a record may hold (a summary of thousands of names is a few
#: MB; a sync cursor of many segments less): a link to /dev/zero or a huge file is not read
MAX_JSON_BYTES = 64 * 1024 * 1024


def encode(value: Any, *, sort_keys: bool = False, indent: bool = False) -> bytes:
    """JSON bytes for anything traintel writes. orjson first; what it refuses (an integer beyond
    64 bits, text with lone surrogates, nesting deeper than 255, a circular reference) is made
    JSON-safe by :func:`traintel.core.validate.json_safe` and encoded again, so that one odd value
    costs that value, not its line."""
    option = (
        orjson.OPT_NON_STR_KEYS
        | (orjson.OPT_SORT_KEYS if sort_keys else 0)
        | (orjson.OPT_INDENT_2 if indent else 0)
    )
    try:
        encoded = orjson.dumps(value, option=option, default=_json_default)
    except (TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        encoded = orjson.dumps(json_safe(value), option=option)
    # orjson (3.12 on) hands back its whole buffer: a 300-byte step line holds 4 KiB. The record
    # writer keeps lines a while (a batch of thousands, lines waiting for a full disk), where
    # that was 16 MiB a batch and memory the allocator kept; an exact copy costs ~0.1 µs
    return bytes(memoryview(encoded))


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
    """Write ``path`` atomically (a temporary file created exclusively under a random name, then
    renamed: ``traintel.record.safe``), so that a link planted in a shared run directory is
    replaced, never written through; a failure is a warning, not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        safe.replace(path, encode(data, indent=True))
        return True
    except OSError as exc:
        if not quiet:
            log.warning("traintel could not write %s: %s", path, exc)
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content (config.json, summary.json, crash-report.json), or None when
    it is missing, unreadable, torn, nested beyond reason or not an object."""
    try:
        return read_json_checked(path)
    except OSError:
        return None


def read_json_checked(path: Path) -> dict[str, Any] | None:
    """:func:`read_json`, but a file traintel refuses to read (a link, a FIFO, a device, a
    directory, over MAX_JSON_BYTES: ``traintel.record.safe.UnsafePath``) or cannot read raises
    its ``OSError``; None when it is missing, torn or not an object."""
    try:
        value = json.loads(safe.read_bytes(path, MAX_JSON_BYTES))
    except FileNotFoundError:
        return None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
