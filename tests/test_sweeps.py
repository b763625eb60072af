"""Trials a search ends early: ``pruned`` (Optuna) and ``stopped`` (Ray Tune), not ``failed``."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

import traintel
from traintel.run.sweeps import early_end
from traintel.testing import capture

optuna = pytest.importorskip("optuna")


def test_trial_pruned_inside_with_run_ends_it_pruned_with_no_error(
    tmp_path, quiet, recorded
) -> None:
    """Optuna's usual pattern, without the integration: ``raise optuna.TrialPruned()``."""
    with capture() as telemetry:
        with pytest.raises(optuna.TrialPruned):
            with traintel.init(project="p", dir=str(tmp_path), **{**quiet, "otlp": None}) as run:
                run.log(loss=1.0)
                raise optuna.TrialPruned("pruned at step 1")
    assert run.summary["status"] == "pruned"
    assert run.summary["errors"]["total"] == 0
    assert not list(run.dir.glob("crash*"))
    lines = recorded(run.dir)
    assert lines.of("error") == []
    assert lines.of("event", "trial_pruned")[0]["fields"]["reason"] == "pruned at step 1"
    assert lines.of("run_end")[-1]["status"] == "pruned"
    states = {
        attrs["status"]: point.value for attrs, point in telemetry.points("traintel_run_status")
    }
    assert states["pruned"] == 1 and states["failed"] == 0  # RunFailed keys on failed


def test_a_subclass_of_trial_pruned_is_pruned_and_other_optuna_errors_fail() -> None:
    class MyPruned(optuna.TrialPruned):
        pass

    assert early_end(MyPruned()) == "pruned"
    assert early_end(optuna.exceptions.StorageInternalError("x")) is None
    assert early_end(type("TrialPruned", (Exception,), {})()) is None  # not Optuna's
    assert early_end(SystemExit(0)) is None


def test_ray_tunes_stop_ends_the_trial_stopped(tmp_path, quiet) -> None:
    """Ray's session ends a stopped function trainable with sys.exit(0) inside report(). Ray is
    not installed here: a stand-in module at the path of Ray's session file does the same."""
    session = tmp_path / "site" / "ray" / "train" / "_internal" / "session.py"
    session.parent.mkdir(parents=True)
    session.write_text("import sys\n\ndef report(metrics):\n    sys.exit(0)\n")
    spec = importlib.util.spec_from_file_location("ray_session_standin", session)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit):
        with traintel.init(project="p", dir=str(tmp_path / "runs"), **quiet) as run:
            run.log(loss=1.0)
            module.report({"loss": 1.0})
    assert run.summary["status"] == "stopped" and run.summary["errors"]["total"] == 0
    with pytest.raises(SystemExit):  # an exit of the user's own is still what it was
        with traintel.init(project="p", dir=str(tmp_path / "runs"), **quiet) as other:
            sys.exit(0)
    assert other.summary["status"] == "finished"


def test_finish_accepts_pruned_and_stopped(tmp_path, quiet) -> None:
    for status in ("pruned", "stopped"):
        run = traintel.init(project="p", dir=str(tmp_path), **quiet)
        run.finish(status)
        assert json.loads((run.dir / "summary.json").read_text())["status"] == status
