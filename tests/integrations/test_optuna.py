"""Optuna through ``traintel.integrations.optuna``, with real Optuna studies and pruners: one run
per trial, grouped by study, pruned trials ``pruned`` (not failed: no error, no crash report, no
RunFailed), the objective in summary.json, ``status --all`` counting them apart and ``logs
compare --group`` ranking the trials."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import QUIET, read_lines
from traintel.cli import main as cli
from traintel.integrations.optuna import trial_run

optuna = pytest.importorskip("optuna")


def _study(tmp_path, n_trials: int = 12, failing: int | None = None, direction="minimize"):
    """Regression trials whose learning rate is suggested; bad ones get pruned by the median
    pruner, trial ``failing`` raises."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="lr-study",
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    runs = {}

    def objective(trial):
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        with trial_run(trial, project="optuna", dir=str(tmp_path), **QUIET) as run:
            runs[trial.number] = run
            for epoch in run.epochs(6):
                for _ in run.track(range(4)):
                    optimizer.zero_grad()
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    loss.backward()
                    optimizer.step()
                    run.log(loss=loss)
                if trial.number == failing:
                    raise ValueError("a real bug in this trial")
                value = loss.item() if direction == "minimize" else -loss.item()
                run.report(value, epoch)
            return run.objective(value)

    study.optimize(objective, n_trials=n_trials, catch=(ValueError,))
    return study, runs


def test_pruned_trials_end_pruned_and_the_rest_carry_their_objective(tmp_path) -> None:
    study, runs = _study(tmp_path, failing=5)
    states = {t.number: t.state.name for t in study.trials}
    assert "PRUNED" in states.values() and "COMPLETE" in states.values()
    for trial in study.trials:
        run = runs[trial.number]
        summary = json.loads((run.dir / "summary.json").read_text())
        expected = {"PRUNED": "pruned", "COMPLETE": "finished", "FAIL": "failed"}[trial.state.name]
        assert summary["status"] == expected, (trial.number, summary["errors"])
        assert summary["group"] == "lr-study" and summary["name"] == f"trial-{trial.number}"
        lines = read_lines(run.dir)
        (config,) = lines.of("config")
        assert config["config"]["trial_number"] == trial.number
        assert config["config"]["lr"] == pytest.approx(trial.params["lr"])
        if expected == "pruned":
            assert summary["errors"]["total"] == 0
            assert not (run.dir / "crash_report.json").exists()
            assert not list(run.dir.glob("crash*"))
            (event,) = lines.of("event", "trial_pruned")
            assert "pruned at step" in event["fields"]["reason"]
        if expected == "finished":
            assert summary["eval"]["objective"]["last"] == pytest.approx(trial.value)
            assert summary["eval"]["objective"]["mode"] == "min"
        if expected == "failed":
            assert summary["errors"]["total"] == 1


def test_status_all_counts_pruned_apart_and_compare_ranks_the_study(tmp_path, monkeypatch) -> None:
    study, runs = _study(tmp_path, failing=5)
    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    states = [t.state.name for t in study.trials]
    result = CliRunner().invoke(cli, ["status", "--all"])
    assert result.exit_code == 0, result.output
    pruned, complete = states.count("PRUNED"), states.count("COMPLETE")
    assert f"{len(states)} runs: 1 failed, {pruned} pruned, {complete} finished" in result.output

    listed = json.loads(
        CliRunner()
        .invoke(cli, ["status", "--all", "--status", "pruned", "--format", "json"])
        .output
    )
    assert len(listed) == pruned

    ranked = json.loads(
        CliRunner()
        .invoke(cli, ["logs", "compare", "--group", "lr-study", "--format", "json"])
        .output
    )
    assert len(ranked) == len(states)
    finished = [r for r in ranked if r["status"] == "finished"]
    assert [r["rank"] for r in finished] == list(range(1, complete + 1))
    assert [r["objective"] for r in finished] == sorted(
        t.value for t in study.trials if t.state.name == "COMPLETE"
    )
    assert finished[0]["objective"] == pytest.approx(study.best_value)
    assert all(r["rank"] is None for r in ranked[complete:])  # pruned and failed follow
    assert CliRunner().invoke(cli, ["logs", "compare", "--group", "other"]).exit_code != 0


def test_a_maximized_study_ranks_the_largest_first(tmp_path, monkeypatch) -> None:
    study, _ = _study(tmp_path, n_trials=6, direction="maximize")
    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    ranked = json.loads(
        CliRunner()
        .invoke(cli, ["logs", "compare", "--group", "lr-study", "--format", "json"])
        .output
    )
    assert ranked[0]["objective"] == pytest.approx(study.best_value)
