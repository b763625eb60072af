"""``run.watch(model)``: a model's size once and its gradient norm every optimizer step."""

from __future__ import annotations

import pytest
import torch

import traintel
from traintel.testing import capture
from traintel.run.watch import watch


@pytest.fixture
def options(quiet):
    """Quiet runs that still export: capture() takes what the run sends."""
    return {**quiet, "otlp": None}


def point(telemetry, name: str, **labels: str) -> float:
    (value,) = [p.value for attrs, p in telemetry.points(name)
                if all(attrs.get(k) == v for k, v in labels.items())]
    return value


def test_watch_records_size_and_the_gradient_norm_of_each_step(tmp_path, options,
                                                                recorded) -> None:
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
                expected.append(torch.nn.utils.get_total_norm(
                    [p.grad for p in model.parameters() if p.grad is not None]).item())
                optimizer.step()
                other(torch.randn(1, 2)).sum().backward()
                other_optimizer.step()  # not the watched model's: ignored
                run.log(loss=1.0)
    total = 8 * 16 + 16 + 16 * 1 + 1
    assert (watched.parameters, watched.trainable, watched.bytes) == (total, total - 16, total * 4)

    lines = recorded(run.dir)
    (event,) = lines.of("event", "model_parameters")
    assert event["fields"] == {"model": "Sequential", "parameters": total,
                               "trainable": total - 16, "bytes": total * 4}
    norms = [s["metrics"]["grad_norm"] for s in lines.of("step")]
    assert norms == pytest.approx(expected)
    assert telemetry.metric("traintel_grad_norm") == [pytest.approx(expected[-1])]
    assert point(telemetry, "traintel_user_value", metric="model_trainable_parameters") == \
        total - 16
    # the run is over: the hook takes itself out at the next step
    optimizer.step()
    assert watched._handle is None
