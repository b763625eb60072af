"""Secret redaction for everything traintel writes or exports.

Two layers: values under secret-looking keys are replaced wherever a mapping is written, and the
secret values themselves (from the config and the environment) are scrubbed out of free text such
as exception messages and log lines, where no key tells us they are secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import env

REDACTED = "[REDACTED]"
#: key names that hold secrets; "token" only as the last word (hf_token, not pad_token_id or
#: num_tokens), "pass" only as a word (db_pass, not num_passes)
_SECRET_KEY = re.compile(
    r"(password|passwd|(^|[_.-])pass$|secret|(^|[_.-])token$|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|credential|authorization|^key$|[_.-]key$|cookie|session[_-]?id|"
    r"(^|[_.-])dsn$)",
    re.IGNORECASE,
)
#: shorter values are too likely to occur by chance in ordinary text
_MIN_SECRET_LEN = 6


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(str(key)))


def redact_mapping(values: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``values`` with every secret-keyed entry replaced by ``[REDACTED]``."""
    return {key: REDACTED if is_secret_key(key) and value else value
            for key, value in values.items()}


def secret_values(config: Any, environ: Mapping[str, str] | None = None) -> set[str]:
    """The secret strings found under secret-looking keys in ``config`` and the environment."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if is_secret_key(k) and isinstance(v, (str, bytes)):
                    text = v.decode(errors="replace") if isinstance(v, bytes) else v
                    if len(text) >= _MIN_SECRET_LEN:
                        found.add(text)
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(config)
    walk(env.snapshot() if environ is None else dict(environ))
    return found


class Scrubber:
    """Replaces known secret values in text; cheap when there are none."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._pattern: re.Pattern[str] | None = None
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        known = set(self._pattern.pattern.split("|")) if self._pattern else set()
        merged = known | {re.escape(s) for s in secrets if len(s) >= _MIN_SECRET_LEN}
        # longest first so that a secret containing another is replaced whole
        self._pattern = re.compile("|".join(sorted(merged, key=len, reverse=True))) \
            if merged else None

    def text(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def deep(self, value: Any) -> Any:
        """Scrub strings anywhere inside ``value`` (dicts, lists) and redact secret keys."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): REDACTED if is_secret_key(k) and v not in (None, "")
                    else self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.deep(v) for v in value]
        return value
