"""Settings: init options over environment defaults, validated; the typed options match them."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from traintel import settings
from traintel.settings import InitOptions, Settings, settings_from


def test_init_options_type_every_setting() -> None:
    """InitOptions (what type checkers see for ``traintel.init(**options)``) lists every setting
    but the three positional ones, each typed as the setting or None (None: not given)."""
    hints = typing.get_type_hints(Settings)
    options = typing.get_type_hints(InitOptions)
    assert set(options) == set(hints) - {"project", "name", "config"}
    for name, hint in options.items():
        assert hint == typing.Optional[hints[name]], name


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
        "/runs", "mine", "DEBUG", 2.5)
    assert chosen.rank is None


def test_ranks_come_from_the_first_launcher_that_sets_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    chosen = settings_from({})
    assert (chosen.rank, chosen.local_rank, chosen.world_size) == (3, 1, 8)


def test_a_launcher_run_id_is_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRAINTEL_RUN_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    assert settings.shared_run_id() == "slurm-77-0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's placeholder
    assert settings.shared_run_id() == "slurm-77-0"


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINTEL_HTTP_PORT", "80a")
    with pytest.raises(ValueError, match="TRAINTEL_HTTP_PORT='80a' must be an integer"):
        settings_from({})
