"""Settings: init options over environment defaults, validated; the typed options match them."""

from __future__ import annotations

import dataclasses
import os
import typing
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import traintel
from traintel.run.settings import InitOptions, Settings, settings_from


def test_init_options_type_every_setting() -> None:
    """InitOptions (what type checkers see for ``traintel.init(**options)``) lists every setting
    but the three positional ones, each typed as the setting or None (None: not given)."""
    hints = typing.get_type_hints(Settings)
    options = typing.get_type_hints(InitOptions)
    assert set(options) == set(hints) - {"project", "name", "config"}
    for name, hint in options.items():
        assert hint == typing.Optional[hints[name]], name  # noqa: UP045  (as get_type_hints spells it)


def test_every_setting_is_documented() -> None:
    for option in dataclasses.fields(Settings):
        assert option.metadata["doc"].endswith((".", ")")), option.name


def test_environment_gives_defaults_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRAINTEL_DIR", "/runs")
    monkeypatch.setenv("TRAINTEL_PROJECT", "from-env")
    monkeypatch.setenv("TRAINTEL_LOG_LEVEL", "debug")
    monkeypatch.setenv("TRAINTEL_SAMPLE_INTERVAL", "2.5")
    chosen = settings_from({"project": "mine", "name": None})
    assert (chosen.dir, chosen.project, chosen.log_level, chosen.sample_interval) == (
        "/runs",
        "mine",
        "DEBUG",
        2.5,
    )
    assert chosen.rank is None


def test_ranks_come_from_the_first_launcher_that_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    chosen = settings_from({})
    assert (chosen.rank, chosen.local_rank, chosen.world_size) == (3, 1, 8)


@pytest.mark.parametrize(
    "variable, value, why",
    [
        ("TRAINTEL_HTTP_PORT", "80a", "must be an integer"),
        ("TRAINTEL_HTTP_PORT", "70000", "the value must be an int from 0 to 65535"),
        ("TRAINTEL_SAMPLE_INTERVAL", "-1", "the value must be a number of seconds"),
        ("TRAINTEL_MODE", "later", "must be one of online, offline"),
        ("TRAINTEL_PROJECT", "a\nb", "control characters"),
    ],
)
def test_a_bad_environment_value_is_its_default_with_a_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    why: str,
) -> None:
    """Settings from the environment never stop a run (issue 28): the default applies, and the
    warning names the variable, not a traintel.init argument the user never passed."""
    monkeypatch.setenv(variable, value)
    chosen = settings_from({"project": "p"} if variable != "TRAINTEL_PROJECT" else {})
    default = Settings()
    assert (chosen.http_port, chosen.sample_interval, chosen.mode, chosen.project) == (
        None,
        default.sample_interval,
        "online",
        "p" if variable != "TRAINTEL_PROJECT" else default.project,
    )
    (said,) = [r.getMessage() for r in caplog.records if variable in r.getMessage()]
    assert f"environment variable {variable}={value!r} is ignored" in said and why in said
    assert "traintel.init" not in said


@pytest.mark.parametrize(
    "variable, value, option, expected",
    [
        ("TRAINTEL_MODE", " Offline", "mode", "offline"),
        ("TRAINTEL_PROGRESS", "LINES", "progress", "lines"),
        ("TRAINTEL_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ],
)
def test_a_choice_in_the_environment_is_read_in_any_case(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, option: str, expected: str
) -> None:
    """As the OpenTelemetry specification reads enumerations in environment variables."""
    monkeypatch.setenv(variable, value)
    assert getattr(settings_from({}), option) == expected


CHOICE_VARIABLES = ("TRAINTEL_MODE", "TRAINTEL_PROGRESS", "TRAINTEL_LOG_LEVEL")


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    variable=st.sampled_from(CHOICE_VARIABLES),
    value=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1
    ),
)
def test_any_text_in_a_choice_variable_is_taken_or_its_default(variable: str, value: str) -> None:
    option = {
        "TRAINTEL_MODE": "mode",
        "TRAINTEL_PROGRESS": "progress",
        "TRAINTEL_LOG_LEVEL": "log_level",
    }[variable]
    with mock.patch.dict(os.environ, {variable: value}):
        chosen = settings_from({})  # never raises: taken, or its default (warned)
    taken = getattr(chosen, option).lower() == value.strip().lower()
    assert taken or getattr(chosen, option) == getattr(Settings(), option)


def test_unknown_init_argument_names_the_closest_valid_one() -> None:
    with pytest.raises(TypeError, match="'totl_epochs'; did you mean 'total_epochs'"):
        traintel.init(project="p", totl_epochs=3)  # type: ignore[call-arg]  # the point


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"total_epochs": 0}, "total_epochs must be an int of at least 1, got 0"),
        ({"total_epochs": "3"}, "total_epochs must be an int"),
        ({"project": ""}, "project must be a non-empty string"),
        ({"progress": "fancy"}, "progress must be one of"),
        ({"http_host": "0.0.0.0", "http_port": 0}, "allow_remote_http=True"),
        ({"config": [1, 2]}, "config must be a dict"),
        (
            {"sample_interval": -1},
            r"sample_interval must be a number of seconds from 0.01 to 3600 \(0 turns sampling off\), got -1",
        ),
        ({"step_span_every": -1}, "step_span_every must be an int of at least 0"),
        ({"http_port": 70000}, "http_port must be an int from 0 to 65535, got 70000"),
        ({"name": "x" * 201}, "name is 201 characters; keep it to 100"),
    ],
)
def test_init_validates_arguments(tmp_path, quiet, kwargs, message) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        traintel.init(**{"dir": str(tmp_path), **quiet, **kwargs})
