"""``run.watch(model)``: a model's size once and its gradient norm every optimizer step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import traintel
from conftest import point
from traintel.run.watch import watch
from traintel.testing import capture


@pytest.fixture
def options(quiet):
    """Quiet runs that still export: capture() takes what the run sends."""
    return {**quiet, "otlp": None}


def test_watch_records_size_and_the_gradient_norm_of_each_step(tmp_path, options, recorded) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    model[0].bias.requires_grad_(False)
    other = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.01)
    expected = []
    with capture() as telemetry:
        with traintel.init(project="watch", dir=str(tmp_path), **options) as run:
            watched = watch(run, model)
            for _ in run.track(range(3)):
                optimizer.zero_grad()
                model(torch.randn(4, 8)).pow(2).mean().backward()
                expected.append(
                    torch.nn.utils.get_total_norm(
                        [p.grad for p in model.parameters() if p.grad is not None]
                    ).item()
                )
                optimizer.step()
                other(torch.randn(1, 2)).sum().backward()
                other_optimizer.step()  # not the watched model's: ignored
                run.log(loss=1.0)
    total = 8 * 16 + 16 + 16 * 1 + 1
    assert (watched.parameters, watched.trainable, watched.bytes) == (total, total - 16, total * 4)

    lines = recorded(run.dir)
    (event,) = lines.of("event", "model_parameters")
    assert event["fields"] == {
        "model": "Sequential",
        "parameters": total,
        "trainable": total - 16,
        "bytes": total * 4,
    }
    norms = [s["metrics"]["grad_norm"] for s in lines.of("step")]
    assert norms == pytest.approx(expected)
    assert telemetry.metric("traintel_grad_norm") == [pytest.approx(expected[-1])]
    assert (
        point(telemetry, "traintel_user_value", metric="model_trainable_parameters") == total - 16
    )
    # the run is over: the hook takes itself out at the next step
    optimizer.step()
    assert watched._handle is None


def _train(run, model, optimizer, steps: int = 3) -> None:
    for _ in run.track(range(steps)):
        optimizer.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        run.log(loss=1.0)


def test_thirty_watched_runs_in_one_process_all_train(tmp_path, quiet, recorded) -> None:
    """A sweep: each trial watches a model (a new one, or the same again) with a real optimizer;
    a finished run's hook must not break the next run's first step (it did: trials 1-29 failed
    with 'OrderedDict mutated during iteration'), and the process keeps one traintel hook."""
    from torch.optim.optimizer import _global_optimizer_pre_hooks

    from traintel.run import optim_hooks

    before = len(_global_optimizer_pre_hooks)
    kinds = [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop]
    shared = torch.nn.Linear(8, 1)
    runs = []
    for trial in range(30):
        model = (
            shared
            if trial % 3 == 0
            else torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        )
        optimizer = kinds[trial % len(kinds)](model.parameters(), lr=0.01)
        with traintel.init(project="sweep", dir=str(tmp_path), group="watched", **quiet) as run:
            run.watch(model)
            _train(run, model, optimizer)
        runs.append(run)
    for run in runs:
        assert run.summary is not None and run.summary["status"] == "finished", run.errors
        norms = [s["metrics"].get("grad_norm") for s in recorded(run.dir).of("step")]
        assert len(norms) == 3 and all(n is not None and n > 0 for n in norms)
    assert optim_hooks.active() == 0
    assert len(_global_optimizer_pre_hooks) <= before + 1


def test_a_rerun_notebook_cell_with_watch_trains(tmp_path, quiet, recorded) -> None:
    """A notebook cell that starts a run, watches and trains, run three times without finish
    (in-process: traintel.init finishes the previous run as a re-run cell does; no Jupyter
    kernel is installed in the test environment, so the cell is a function called again)."""
    model = torch.nn.Linear(8, 1)
    namespace: dict[str, object] = {}

    def cell() -> None:
        run = namespace["run"] = traintel.init(project="notebook", dir=str(tmp_path), **quiet)
        run.watch(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(4, 8)).sum().backward()
            optimizer.step()
            run.log(loss=1.0)

    dirs = []
    for _ in range(3):
        cell()
        dirs.append(namespace["run"].dir)  # type: ignore[attr-defined]
    namespace["run"].finish()  # type: ignore[attr-defined]
    for run_dir in dirs:
        steps = recorded(run_dir).of("step")
        assert [s["step"] for s in steps] == [1, 2]
        assert all(s["metrics"]["grad_norm"] > 0 for s in steps)


def test_a_run_ended_from_inside_an_optimizer_step_leaves_the_next_run_training(
    tmp_path, quiet, recorded
) -> None:
    """The end of a run can come from inside torch's hook iteration (a user's own global hook
    here): taking hooks out there must not break that step or the next run's."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = traintel.init(project="inside", dir=str(tmp_path), **quiet)
    first.watch(model)
    handle = register_optimizer_step_pre_hook(lambda *_: first.finish())
    try:
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
    finally:
        handle.remove()
    assert first.finished
    with traintel.init(project="inside", dir=str(tmp_path), **quiet) as second:
        second.watch(model)
        _train(second, model, optimizer)
    assert [s["metrics"]["grad_norm"] > 0 for s in recorded(second.dir).of("step")] == [True] * 3


def test_watch_names_the_compiled_models_own_class(tmp_path, quiet, recorded) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 1))
    with traintel.init(project="compiled", dir=str(tmp_path), **quiet) as run:
        run.watch(torch.compile(model), grad_norm=False)
    (event,) = recorded(run.dir).of("event", "model_parameters")
    assert event["fields"]["model"] == "Sequential"


def test_torch_compile_sees_no_graph_break_from_a_run_logged_outside(
    tmp_path, quiet, recorded
) -> None:
    """What the README says of torch.compile: with run.watch and run.log outside the compiled
    function, one graph and no break; run.log inside it breaks the graph (values still right).
    The eager backend: dynamo's tracing is what is checked, no compiler needed."""
    import torch._dynamo as dynamo

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with traintel.init(project="compiled", dir=str(tmp_path), **quiet) as run:
        run.watch(model)

        @torch.compile(backend="eager")
        def outside(x):
            return model(x).pow(2).mean()

        @torch.compile(backend="eager")
        def inside(x):
            loss = model(x).pow(2).mean()
            run.log(loss=loss)
            return loss

        dynamo.reset()
        dynamo.utils.counters.clear()
        logged = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = outside(torch.randn(8, 4))
            loss.backward()
            optimizer.step()
            run.log(loss=loss)
            logged.append(loss.item())
        assert sum(dynamo.utils.counters["graph_break"].values()) == 0
        dynamo.utils.counters.clear()
        optimizer.zero_grad()
        logged.append(inside(torch.randn(8, 4)).item())
        assert sum(dynamo.utils.counters["graph_break"].values()) >= 1
    steps = recorded(run.dir).of("step")
    assert [s["metrics"]["loss"] for s in steps] == pytest.approx(logged)
    assert all(s["metrics"].get("grad_norm", 1) > 0 for s in steps[:3])


def test_under_clipping_the_norm_is_the_applied_one_and_the_loops_pre_clip_value_wins(
    tmp_path, options, recorded
) -> None:
    """Issue 29 finding 14, as the README says it: ``run.watch`` reads the gradients the optimizer
    applies, so under ``clip_grad_norm_(..., 1.0)`` its ``grad_norm`` is 1.0 (after clipping);
    the norm before clipping is what ``clip_grad_norm_`` returns, and logged by the loop as
    ``grad_norm`` it is the step's value, in the record and exported, not the clipped one."""
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before: list[float] = []
    with capture() as telemetry:
        with traintel.init(project="watch", dir=str(tmp_path), **options) as run:
            run.watch(model)
            for i in run.track(range(4)):
                optimizer.zero_grad()
                (model(torch.randn(8, 16)) * 100).pow(2).mean().backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                if i < 2:
                    run.log(loss=1.0)  # watch's value only: the norm after clipping
                else:
                    before.append(norm.item())
                    run.log(loss=1.0, grad_norm=norm)  # the README's way to the norm before it
    assert min(before) > 100  # the gradients were clipped hard
    norms = [s["metrics"]["grad_norm"] for s in recorded(run.dir).of("step")]
    assert norms[:2] == pytest.approx([1.0, 1.0], rel=1e-5)
    assert norms[2:] == pytest.approx(before)
    assert telemetry.metric("traintel_grad_norm") == [pytest.approx(before[-1])]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "after any clipping" in readme  # said where users look
