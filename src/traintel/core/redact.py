"""Secret redaction: one mechanism, applied at every exit.

Everything traintel writes or exports passes through a :class:`Redactor`: the record and its
JSON files, the console, the uncaught-exception printout, the crash report and ``traintel
report``, OTLP logs, spans and resource attributes, and ``/status``. It finds secrets three ways:

- **by key name**, on whole tokens of the name (``hf_token``, ``apiKey``, ``DB_PASSWORD``,
  ``github_pat``), not on substrings, so that ``pad_token``, ``sort_key``, ``rng_key``,
  ``num_tokens`` and ``password_min_length`` survive (:func:`is_secret_key`);
- **by the shape of a value** in free text: credentials in URLs, ``Authorization``/bearer/basic
  credentials, well-known token formats (GitHub, Hugging Face, OpenAI, AWS, Slack, GitLab, Google,
  Stripe, npm, PyPI, JWTs, PEM private keys), signature and token parameters of signed URLs,
  ``--hf-token VALUE`` command-line pairs and ``password=...`` pairs;
- **by value**: the strings found under secret keys in the run's config and in the environment
  are replaced wherever they appear, even where nothing marks them.

Text is also made encodable on the way (``traintel.core.validate.clean_text``), so a redacted value is
always one every sink can write.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from traintel.core import env
from traintel.core.validate import clean_text

REDACTED = "[REDACTED]"
#: what stands for a value nested deeper than MAX_DEPTH in :meth:`Redactor.deep`
TOO_DEEP = "[nested too deep]"
#: how deep :meth:`Redactor.deep` goes: deeper than any field a run records in practice, and
#: well within Python's recursion limit whatever a crafted record line nests
MAX_DEPTH = 64
#: known secret values shorter than this are too likely to occur by chance in ordinary text
_MIN_SECRET_LEN = 6

# -- secret keys, by whole tokens -------------------------------------------------------------
_SPLIT = re.compile(
    r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|"
    r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])"
)
#: a name with one of these tokens anywhere holds a secret (unless it ends in a _NOT_A_VALUE word)
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "passcode",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "creds",
        "apikey",
        "jwt",
        "pat",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "cookies",
        "dsn",
        "privatekey",
        "secretkey",
        "accesskey",
        "webhook",
        "sessionid",
        "accesstoken",
        "authtoken",
        "refreshtoken",
        "xsrf",
        "csrf",
        # whole names of well-known variables that hold one (libpq, sshpass, MySQL)
        "pgpassword",
        "sshpass",
        "mysqlpwd",
    }
)
#: names ending in these describe a secret without holding one (``password_file``, ``secret_name``)
_NOT_A_VALUE = frozenset(
    {
        "path",
        "file",
        "files",
        "dir",
        "directory",
        "name",
        "names",
        "length",
        "len",
        "size",
        "min",
        "max",
        "count",
        "num",
        "type",
        "kind",
        "mode",
        "enabled",
        "enable",
        "required",
        "policy",
        "sock",
        "socket",
        "provider",
        "method",
        "version",
        "format",
        "env",
        "var",
        "id",
        "ids",
        "scheme",
        "header",
        "headers",
        "field",
        "fields",
        "prefix",
        "url_template",
    }
)
#: ``<word>_token`` is a tokenizer's token (``pad_token``), not a credential, for these words
_TOKENIZER_WORDS = frozenset(
    {
        "pad",
        "bos",
        "eos",
        "unk",
        "mask",
        "sep",
        "cls",
        "start",
        "end",
        "begin",
        "special",
        "additional",
        "eot",
        "eom",
        "sot",
        "image",
        "img",
        "audio",
        "video",
        "vision",
        "boi",
        "eoi",
        "new",
        "first",
        "last",
        "next",
        "prev",
        "previous",
        "max",
        "min",
        "num",
        "n",
        "total",
        "per",
        "avg",
        "mean",
        "count",
        "input",
        "output",
        "decoder",
        "encoder",
        "prompt",
        "system",
        "assistant",
        "tool",
        "thinking",
        "placeholder",
        "dummy",
        "fill",
        "fim",
        "middle",
        "prefix",
        "suffix",
        "pause",
        "think",
        "bot",
        "answer",
        "query",
        "doc",
        "word",
        "subword",
        "char",
        "byte",
        "context",
        "stop",
        "eod",
        "bod",
        "default",
        "generation",
        "vocab",
        "label",
        "target",
    }
)
#: ``<word>_key`` is a credential for these words (``api_key``, ``secret_key``), not ``sort_key``
_KEY_WORDS = frozenset(
    {
        "api",
        "access",
        "secret",
        "private",
        "ssh",
        "encryption",
        "encrypt",
        "signing",
        "sign",
        "license",
        "licence",
        "account",
        "master",
        "client",
        "app",
        "auth",
        "sas",
        "storage",
        "subscription",
        "service",
        "deploy",
        "deployment",
        "gpg",
        "pgp",
        "hmac",
        "session",
        "aws",
        "openai",
        "anthropic",
        "wandb",
        "hf",
        "huggingface",
        "comet",
        "neptune",
        "mlflow",
        "cohere",
        "mistral",
        "groq",
        "replicate",
        "stripe",
        "google",
        "gcp",
        "gcs",
        "azure",
        "datadog",
        "dd",
        "sentry",
        "slack",
        "github",
        "gitlab",
        "pinecone",
        "sendgrid",
        "twilio",
        "admin",
        "root",
        "consumer",
        "developer",
        "shared",
        "symmetric",
        "cipher",
        "crypto",
        "kms",
        "jwt",
        "token",
        "write",
        "x",
        "kaggle",
    }
)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a value named ``key`` holds a secret, judged on the name's whole tokens
    (``snake_case``, ``camelCase``, ``kebab-case``, ``--flags`` and ``SHOUTING`` alike)."""
    tokens = [t.lower() for t in _SPLIT.split(str(key)) if t]
    if not tokens:
        return False
    last = tokens[-1]
    if "session" in tokens and last in ("id", "token", "key", "cookie"):
        return True
    if last in _NOT_A_VALUE:
        return False
    if any(t in _SECRET_WORDS for t in tokens):
        return True
    before = tokens[-2] if len(tokens) > 1 else None
    if last == "token":
        return before not in _TOKENIZER_WORDS
    if last == "key":
        return before in _KEY_WORDS
    return last in ("pass", "pw")  # ``db_pass``, a config's ``pw``


# -- secrets by the shape of a value in text --------------------------------------------------
def _keep_group_1(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


def _flag(match: re.Match[str]) -> str:
    """``--hf-token VALUE`` / ``--password=VALUE``: the value redacted when the flag names a
    secret (and the dashes start a flag, not the middle of a word)."""
    start = match.start()
    if start and (match.string[start - 1].isalnum() or match.string[start - 1] in "_-"):
        return match.group(0)
    return _hide_value(match, match.group("key"))


def _pairs(text: str) -> str:
    """``key=value``, ``"key": "value"``: each value redacted whose key (read backwards from the
    separator) names a secret. A separator whose key is no secret is stepped over one character
    at a time, so that ``note: password=x`` finds ``password`` inside what looked like the first
    value. Anchored on ``:``/``=``: Python's regex engine scans fast for a character set, and
    slowly for a pattern that may start at any word."""
    out: list[str] = []
    done = start = 0
    while (match := _SEPARATOR.search(text, start)) is not None:
        end = match.start()
        while end > 0 and text[end - 1] in " \t\"'":
            end -= 1
        begin = end
        while begin > 0 and (text[begin - 1].isalnum() or text[begin - 1] in "_.-"):
            begin -= 1
        value = match.group("value")
        if begin < end and REDACTED not in value and is_secret_key(text[begin:end]):
            quote = value[0] if value[:1] in ("'", '"') else ""
            out += [text[done : match.start("value")], quote, REDACTED, quote]
            done = start = match.end()
        else:
            start = match.start() + 1
    return "".join(out) + text[done:] if out else text


def _hide_value(match: re.Match[str], key: str) -> str:
    value = match.group("value")
    if not key or REDACTED in value or not is_secret_key(key):
        return match.group(0)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return match.group(0)[: match.start("value") - match.start()] + f"{quote}{REDACTED}{quote}"


_VALUE = r"""(?P<value>\[REDACTED\]|"[^"\n]*"|'[^'\n]*'|[^\s"',;&)}\]]+)"""
#: beginnings of the token formats below, searched with ``in`` before any regex runs
_TOKEN_PREFIXES = (
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "hf_",
    "sk-",
    "AKIA",
    "ASIA",
    "xox",
    "glpat-",
    "AIza",
    "k_live_",
    "npm_",
    "pypi-",
    "eyJ",
)
#: words of secret names, searched with ``in`` (lower case) before the pair patterns run
_SECRETISH = (
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "cred",
    "cookie",
    "jwt",
    "pat",
    "dsn",
    "session",
    "webhook",
    "csrf",
    "xsrf",
    "bearer",
)
#: words that introduce a secret in prose, searched with ``in`` (lower case) first
_PROSE_WORDS = ("token", "password", "passphrase", "passwd", "secret", "key")
Replacement = str | Callable[[re.Match[str]], str]
#: (when to look, what, its replacement): each pattern runs only on text that has what it needs,
#: so that ordinary text costs a few substring searches
_SHAPES: tuple[tuple[Callable[[str, str], bool], re.Pattern[str], Replacement], ...] = (
    # PEM private keys, whole blocks
    (
        lambda t, low: "PRIVATE KEY-----" in t,
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE "
            r"KEY-----|\Z)",
            re.S,
        ),
        REDACTED,
    ),
    # credentials in URLs: scheme://user:password@host, scheme://long-token@host
    (
        lambda t, low: "://" in t and "@" in t,
        re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:@/?#]*:)[^\s@/?#]+(?=@)"),
        _keep_group_1,
    ),
    (
        lambda t, low: "://" in t and "@" in t,
        re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s:@/?#]{16,}(?=@)"),
        _keep_group_1,
    ),
    # Authorization headers, bearer and basic credentials
    (
        lambda t, low: "authorization" in low,
        re.compile(
            r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest|"
            r"negotiate)\s+)?)[^\s\"',;]+"
        ),
        _keep_group_1,
    ),
    (
        lambda t, low: "bearer" in low,
        re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*"),
        _keep_group_1,
    ),
    (
        lambda t, low: "Basic " in t,
        re.compile(r"(\bBasic\s+)[A-Za-z0-9+/]{8,}={0,2}"),
        _keep_group_1,
    ),
    # well-known token formats
    (
        lambda t, low: any(prefix in t for prefix in _TOKEN_PREFIXES),
        re.compile(
            r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|"
            r"hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|"
            r"xox[abposr]-[A-Za-z0-9\-]{10,}|glpat-[A-Za-z0-9_\-]{20,}|"
            r"AIza[0-9A-Za-z_\-]{35}|[rs]k_live_[0-9A-Za-z]{20,}|npm_[A-Za-z0-9]{36}|"
            r"pypi-[A-Za-z0-9_\-]{50,}|"
            r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})"
        ),
        REDACTED,
    ),
    (
        lambda t, low: "hooks.slack.com" in t,
        re.compile(r"(https://hooks\.slack\.com/services/)[A-Za-z0-9/]+"),
        _keep_group_1,
    ),
    # signature and token parameters of signed URLs
    (
        lambda t, low: "?" in t and "=" in t,
        re.compile(
            r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|"
            r"x-goog-signature|x-goog-credential|signature|sig|token|access_token|id_token|"
            r"refresh_token|api_key|apikey|key|password|secret|client_secret|code)=)"
            r"[^&\s#\"']+"
        ),
        _keep_group_1,
    ),
    # a secret introduced in prose: "with token abc123def456", "the password is hunter2hunter2"
    (
        lambda t, low: any(word in low for word in _PROSE_WORDS),
        re.compile(
            r"(?i)(\b(?:token|password|passphrase|passwd|secret|api[ _-]?key|access[ _-]?key)"
            r"(?:\s+(?:is|was|of)\b)?(?:\s*[:=]\s*|\s+)[\"'`]?)"
            r"(?=[A-Za-z0-9_\-.+/]*[0-9])(?=[A-Za-z0-9_\-.+/]*[A-Za-z])"
            r"[A-Za-z0-9_\-.+/]{8,}"
        ),
        _keep_group_1,
    ),
    # --hf-token VALUE, --password=VALUE
    (
        lambda t, low: "-" in t and any(word in low for word in _SECRETISH),
        re.compile(r"--?(?P<key>[A-Za-z][\w-]*)(?:=|[ \t]+)(?!-)" + _VALUE),
        _flag,
    ),
)
_SEPARATOR = re.compile(r"[\"']?[ \t]*[:=][ \t]*" + _VALUE)
_FLAG = re.compile(r"--?[A-Za-z][\w-]*")


class Redactor:
    """Replaces secrets in text and in nested values; made per run from its config and the
    environment (:meth:`for_config`), or from the environment alone (:meth:`for_environment`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        #: known secret values, longest first (a secret containing another is replaced whole)
        self._known: list[str] = []
        self.add(secrets)

    @classmethod
    def for_config(cls, config: Any) -> Redactor:
        return cls(secret_values(config))

    @classmethod
    def for_environment(cls) -> Redactor:
        return cls(secret_values({}))

    def add(self, secrets: Iterable[str]) -> None:
        """Secret values to replace wherever they appear."""
        known = set(self._known) | {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        self._known = sorted(known, key=len, reverse=True)

    def text(self, text: str) -> str:
        """``text`` encodable, with every secret it holds replaced by ``[REDACTED]``."""
        if not text:
            return text
        text = clean_text(text)
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        low = text.lower()
        for needed, pattern, replacement in _SHAPES:
            if needed(text, low):
                text = pattern.sub(replacement, text)
        # password=VALUE, "api_key": "VALUE", Authorization: VALUE
        return _pairs(text) if any(word in low for word in _SECRETISH) else text

    def deep(self, value: Any, depth: int = 0) -> Any:
        """``value`` with every string redacted, values under secret keys replaced, and the
        value after a secret ``--flag`` in a list (an argv) replaced. What is nested deeper than
        MAX_DEPTH (a crafted record line 500 deep) is replaced by a note: never a
        ``RecursionError``, never an unredacted leaf."""
        if isinstance(value, str):
            return self.text(value)
        if depth >= MAX_DEPTH and isinstance(value, (Mapping, list, tuple)):
            return TOO_DEEP
        if isinstance(value, Mapping):
            return {
                self.text(str(k)): REDACTED if _holds_secret(k, v) else self.deep(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            out: list[Any] = []
            hide_next = False
            for item in value:
                if hide_next and isinstance(item, str) and not item.startswith("-"):
                    out.append(REDACTED)
                    hide_next = False
                    continue
                hide_next = (
                    isinstance(item, str) and bool(_FLAG.fullmatch(item)) and is_secret_key(item)
                )
                out.append(self.deep(item, depth + 1))
            return out
        return value


def _holds_secret(key: object, value: object) -> bool:
    return (
        is_secret_key(str(key))
        and value is not None
        and value != ""
        and not isinstance(value, bool)
    )


#: environment variables whose names look secret but are not (a shell's working directories)
_NOT_SECRET_VARIABLES = frozenset({"PWD", "OLDPWD"})


def secret_values(config: Any, environ: Mapping[str, str] | None = None) -> set[str]:
    """The secret strings found under secret keys in ``config`` and the environment, and after
    secret ``--flags`` in argv lists."""
    found: set[str] = set()

    def keep(text: object) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        if isinstance(text, str) and len(text) >= _MIN_SECRET_LEN:
            found.add(clean_text(text))

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if is_secret_key(str(k)):
                    keep(v)
                walk(v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if (
                    isinstance(v, str)
                    and _FLAG.fullmatch(v)
                    and is_secret_key(v)
                    and i + 1 < len(value)
                ):
                    keep(value[i + 1])
                walk(v)

    walk(config)
    environment = env.snapshot() if environ is None else dict(environ)
    walk({k: v for k, v in environment.items() if k not in _NOT_SECRET_VARIABLES})
    for name, value in environment.items():
        if _HEADERS_VARIABLE.fullmatch(name):
            found.update(header_values(value))
    return found


#: OTEL_EXPORTER_OTLP_HEADERS and its per-signal forms: every value is a credential or a tenant
#: (``x-honeycomb-team=KEY``, ``Authorization=Basic ...``, ``X-Scope-OrgID=...``)
_HEADERS_VARIABLE = re.compile(r"OTEL_EXPORTER_OTLP_(?:(?:TRACES|METRICS|LOGS)_)?HEADERS")


_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "negotiate"})


def header_values(text: str) -> set[str]:
    """The values of an OTLP headers variable (``name=value,name=value``), as written and
    URL-decoded, and each of their words (a value that wrapped onto a new line, ``Basic`` and its
    credentials), for the redactor to replace wherever they appear."""
    found: set[str] = set()
    for item in text.split(","):
        _, separator, value = item.partition("=")
        if not separator:
            continue
        for form in {value, unquote(value)}:
            for piece in [form.strip(), *form.split()]:
                if len(piece) >= _MIN_SECRET_LEN and piece.lower() not in _SCHEMES:
                    found.add(clean_text(piece))
    return found


# -- the OpenTelemetry SDK's own log records ---------------------------------------------------
#: the SDK's logger that prints a header it cannot parse, credentials and all
_HEADER_LOGGER = "opentelemetry.util.re"


class SdkLogRedactor(logging.Filter):
    """Passes the OpenTelemetry SDK's own log records through the redactor before any handler
    sees them. The SDK prints an ``OTEL_EXPORTER_OTLP_HEADERS`` entry it cannot parse whole
    (``Header format invalid! ...: Authorization=Basic MTIz...``, as when a base64 value wraps
    onto a new line): of such an entry only the header's name is kept, and the line names the
    variable."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if (
                record.name == _HEADER_LOGGER
                and record.args
                and isinstance(record.args, tuple)
                and isinstance(record.args[0], str)
            ):
                name = record.args[0].partition("=")[0].strip()[:100]
                record.args = (
                    f"{name}={REDACTED} (in OTEL_EXPORTER_OTLP_HEADERS or its "
                    "per-signal form: URL-encode the value, with no line breaks)",
                )
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: its arguments are not printed
            record.msg, record.args = f"{record.msg!s:.200} (arguments withheld)", None
            return True
        record.msg, record.args = Redactor.for_environment().text(message), None
        return True


_sdk_redacted: set[str] = set()


def redact_sdk_logs() -> None:
    """Install :class:`SdkLogRedactor` on the SDK's header parser and on every OpenTelemetry
    logger made so far (a logger's filters see only its own records, so each is named): called
    before exporters are made, which is when the SDK parses the headers."""
    names = {
        _HEADER_LOGGER,
        *(name for name in logging.root.manager.loggerDict if name.startswith("opentelemetry")),
    }
    for name in names - _sdk_redacted:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SdkLogRedactor) for f in logger.filters):
            logger.addFilter(SdkLogRedactor())
        _sdk_redacted.add(name)
