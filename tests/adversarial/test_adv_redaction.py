"""Redaction, one mechanism: secrets found by key-name tokens, by the shape of a value and by
value, wherever they stand; look-alikes that diagnostics need survive."""

from __future__ import annotations

import pytest
from adv_helpers import leaks
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from secrets_corpus import (
    ARGV,
    ARGV_TOKEN,
    GITHUB_TOKEN,
    HF_TOKEN,
    JWT,
    LOOK_ALIKE_CONFIG,
    LOOK_ALIKE_TEXTS,
    OPENAI_KEY,
    SECRET_CONFIG,
    SECRET_TEXTS,
    SLACK_TOKEN,
    URL_WITH_CREDENTIALS,
)

from traintel.core.redact import REDACTED, Redactor, is_secret_key, secret_values

SECRET_KEYS = [
    "password",
    "db_password",
    "DB_PASSWORD",
    "pwd",
    "passphrase",
    "auth",
    "jwt",
    "github_pat",
    "hf_token",
    "HF_TOKEN",
    "hfToken",
    "apiKey",
    "api_key",
    "x-api-key",
    "OPENAI_API_KEY",
    "aws_secret_access_key",
    "AWS_SESSION_TOKEN",
    "session_id",
    "client_secret",
    "access_token",
    "id_token",
    "token",
    "db_pass",
    "--hf-token",
    "--wandb-api-key",
    "private_key",
    "Authorization",
    "cookie",
    "webhook_url",
    "dsn",
    "credentials",
]
LOOK_ALIKE_KEYS = [
    "sort_key",
    "pad_token",
    "pad_token_id",
    "eos_token",
    "bos_token",
    "mask_token",
    "rng_key",
    "prng_key",
    "num_tokens",
    "max_tokens",
    "max_new_tokens",
    "tokens_per_second",
    "token_budget",
    "tokenizer",
    "tokenizer_name",
    "key_dim",
    "cache_key",
    "primary_key",
    "key",
    "password_min_length",
    "password_file",
    "secret_name",
    "author",
    "num_passes",
    "passes",
    "keyboard",
    "monkey",
    "auth_method",
    "SSH_AUTH_SOCK",
    "bypass",
    "compass",
    "--max-tokens",
    "--pad-token-id",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_key_names_are_found_by_their_tokens(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", LOOK_ALIKE_KEYS)
def test_look_alike_key_names_survive(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize("text", SECRET_TEXTS)
def test_secrets_in_free_text_are_found_by_their_shape(text: str) -> None:
    redacted = Redactor().text(text)
    assert leaks(redacted) == [] and REDACTED in redacted, redacted


@pytest.mark.parametrize("text", LOOK_ALIKE_TEXTS)
def test_look_alike_text_survives(text: str) -> None:
    assert Redactor().text(text) == text


def test_a_config_keeps_its_look_alikes_and_loses_its_secrets() -> None:
    redacted = Redactor.for_config(SECRET_CONFIG).deep(
        {**SECRET_CONFIG, **LOOK_ALIKE_CONFIG, "argv": ARGV}
    )
    assert leaks(str(redacted)) == []
    assert {k: redacted[k] for k in LOOK_ALIKE_CONFIG} == LOOK_ALIKE_CONFIG
    assert redacted["argv"] == [
        "train.py",
        "--lr",
        "3e-4",
        "--hf-token",
        REDACTED,
        f"--wandb-api-key={REDACTED}",
    ]


def test_known_values_are_replaced_wherever_they_appear() -> None:
    """A secret under a secret key is found again in text that gives it no key at all."""
    known = secret_values({"db": {"password": "correct-horse-battery"}, "argv": ARGV}, {})
    redactor = Redactor(known)
    assert redactor.text("retrying with correct-horse-battery") == f"retrying with {REDACTED}"
    assert redactor.text(f"argument {ARGV_TOKEN}") == f"argument {REDACTED}"


def test_the_environment_is_searched_but_not_the_working_directory(monkeypatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "service-token-value-1")
    monkeypatch.setenv("PWD", "/home/someone/project")
    redactor = Redactor.for_environment()
    assert (
        redactor.text("/home/someone/project uses service-token-value-1")
        == f"/home/someone/project uses {REDACTED}"
    )


def test_credentials_leave_a_url_usable_for_diagnosis() -> None:
    assert (
        Redactor().text(f"POST {URL_WITH_CREDENTIALS}/v1/traces")
        == f"POST https://alice:{REDACTED}@collector.example.com:4318/v1/traces"
    )


SHAPED = [GITHUB_TOKEN, HF_TOKEN, OPENAI_KEY, SLACK_TOKEN, JWT]
SEPARATORS = st.sampled_from([" ", "\n", "\t", "'", '"', "(", ")", ",", ": ", "=", "[", "]"])
PROSE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(before=PROSE, after=PROSE, left=SEPARATORS, right=SEPARATORS, secret=st.sampled_from(SHAPED))
def test_a_token_is_found_whatever_text_surrounds_it(before, after, left, right, secret) -> None:
    text = f"{before}{left}{secret}{right}{after}"
    assert secret not in Redactor().text(text)


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from([k for k in SECRET_KEYS if not k.startswith("-")]),
    value=st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"',;&)}]"),
        min_size=6,
        max_size=40,
    ),
    sep=st.sampled_from(["=", ": ", " = ", '": "']),
    prose=PROSE,
)
def test_a_value_after_a_secret_key_is_found_in_text(key, value, sep, prose) -> None:
    assume(value not in prose and value not in key)
    close = '"' if sep.endswith('"') else ""
    text = f"{prose} {key}{sep}{value}{close} more"
    assert value not in Redactor().text(text).replace(key, "")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_redaction_of_any_text_is_encodable_and_idempotent(text) -> None:
    redactor = Redactor(["s3cr3t-value"])
    once = redactor.text(text)
    once.encode("utf-8")  # surrogates escaped: every sink can write it
    assert redactor.text(once) == once
