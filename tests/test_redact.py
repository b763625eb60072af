"""Redaction (traintel.core.redact): which keys hold secrets, which values are found, and how text and
nested values are redacted."""

from __future__ import annotations

import pytest

from traintel.core.redact import REDACTED, Redactor, is_secret_key, secret_values


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "DB_PASSWORD",
        "db_pass",
        "hf_token",
        "api_key",
        "apiKey",
        "aws_secret_access_key",
        "private-key",
        "ssh.key",
        "Authorization",
        "session_id",
        "sentry_dsn",
        "credentials",
        "cookie",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "pad_token_id",
        "num_tokens",
        "num_passes",
        "tokenizer",
        "keys",
        "monkey_patch",
        "lr",
        "batch_size",
        "passes",
    ],
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_secret_values_come_from_secret_keys_in_config_and_environment() -> None:
    config = {
        "db": {"password": "hunter2hunter2"},
        "tokens": [{"hf_token": b"hf_abcdef"}],
        "api_key": "short",
        "lr": "0.001",
    }
    found = secret_values(config, environ={"WANDB_API_KEY": "env-secret-1", "HOME": "/root"})
    assert found == {"hunter2hunter2", "hf_abcdef", "env-secret-1"}  # "short": under 6


def test_text_is_scrubbed_longest_secret_first() -> None:
    scrubber = Redactor({"abcdef", "abcdefgh"})
    assert scrubber.text("x abcdefgh y abcdef") == f"x {REDACTED} y {REDACTED}"
    assert Redactor().text("nothing to do") == "nothing to do"
    scrubber.add({"zzzzzz"})
    assert scrubber.text("zzzzzz abcdef") == f"{REDACTED} {REDACTED}"


def test_deep_scrubs_nested_values_and_redacts_secret_keys() -> None:
    scrubber = Redactor({"s3cr3t-value"})
    value = {
        "token": "anything",
        "empty_password": "",
        "nested": [{"note": "is s3cr3t-value"}],
        7: ("a", "s3cr3t-value"),
    }
    assert scrubber.deep(value) == {
        "token": REDACTED,
        "empty_password": "",
        "nested": [{"note": f"is {REDACTED}"}],
        "7": ["a", REDACTED],
    }


def test_a_mapping_of_environment_variables_is_redacted_by_key() -> None:
    assert Redactor().deep({"NCCL_DEBUG": "INFO", "HF_TOKEN": "hf_x", "EMPTY_TOKEN": ""}) == {
        "NCCL_DEBUG": "INFO",
        "HF_TOKEN": REDACTED,
        "EMPTY_TOKEN": "",
    }
