"""0-d tensors in ``run.log``: an accelerator's are read without a host-device sync, off the
training thread, in step order, detached; a CPU tensor is converted at once, as before.

No accelerator here: a stand-in tensor says it lives on ``cuda``, counts every ``.item()`` on
it (the sync) and hands out its host copy; a stand-in event records which thread waits on it."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest
import torch

import traintel
from traintel.record import tensors


class FakeCudaTensor(torch.Tensor):
    """A 0-d tensor that claims to live on a GPU: reading it on the spot is a sync (counted)."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    syncs = 0
    copies: list[dict] = []

    @staticmethod
    def __new__(cls, value: float, requires_grad: bool = False):
        return torch.Tensor._make_subclass(cls, torch.tensor(value), requires_grad)

    @property
    def device(self):  # type: ignore[override]
        return torch.device("cuda", 0)

    @property
    def is_cpu(self):  # type: ignore[override]
        return False

    def item(self):  # type: ignore[override]
        FakeCudaTensor.syncs += 1
        return super().item()

    def detach(self):  # type: ignore[override]
        return FakeCudaTensor(torch.Tensor.item(self))

    def to(self, *args, **kwargs):  # type: ignore[override]
        FakeCudaTensor.copies.append({"args": args, **kwargs})
        return torch.tensor(torch.Tensor.item(self))  # the host copy (a real CPU tensor)


class FakeEvent:
    waited_on: list[str] = []

    def __init__(self, device) -> None:
        self.recorded = False

    def record(self) -> None:
        self.recorded = True

    def synchronize(self) -> None:
        assert self.recorded
        FakeEvent.waited_on.append(threading.current_thread().name)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setitem(tensors.EVENT_FACTORIES, "cuda", FakeEvent)
    FakeCudaTensor.syncs, FakeCudaTensor.copies[:] = 0, []
    FakeEvent.waited_on.clear()
    yield


def test_accelerator_tensors_arrive_in_step_order_without_a_sync(
    tmp_path, quiet, recorded, fake_cuda
) -> None:
    with traintel.init(project="t", dir=str(tmp_path), **quiet) as run:
        for i in range(300):
            run.log(loss=FakeCudaTensor(float(i)), lr=0.1, acc=FakeCudaTensor(i / 1000))
        deadline = time.monotonic() + 30
        while len(FakeEvent.waited_on) < 600 and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer reads them on its own schedule (flush_interval)
        assert set(FakeEvent.waited_on) == {"traintel-record"}, set(FakeEvent.waited_on)
        for i in range(300, 310):  # inside run.track, with a plain float between
            for _ in run.track(range(1)):
                run.log(loss=FakeCudaTensor(float(i)), lr=0.1)
    assert FakeCudaTensor.syncs == 0  # nothing read a GPU value on the training thread
    assert all(copy.get("non_blocking") is True for copy in FakeCudaTensor.copies)
    steps = recorded(run.dir).of("step")
    assert [s["metrics"]["loss"] for s in steps] == [float(i) for i in range(310)]
    assert [s["metrics"].get("acc") for s in steps[:300]] == pytest.approx(
        [torch.tensor(i / 1000).item() for i in range(300)]
    )
    assert run.summary["loss"]["final"] == 309.0
    assert run.state.latest["loss"] == 309.0


def test_a_tensor_that_requires_grad_is_detached_and_its_graph_let_go(
    tmp_path, quiet, recorded, fake_cuda
) -> None:
    with traintel.init(project="t", dir=str(tmp_path), **{**quiet, "flush_interval": 60}) as run:
        loss = FakeCudaTensor(2.5, requires_grad=True)
        gone = weakref.ref(loss)
        run.log(loss=loss)
        del loss
        gc.collect()
        assert gone() is None  # the writer has not read it yet (flush_interval 60 s)
    assert recorded(run.dir).of("step")[0]["metrics"]["loss"] == 2.5


def test_a_non_finite_accelerator_value_is_flagged_when_read(
    tmp_path, quiet, recorded, fake_cuda
) -> None:
    with traintel.init(project="t", dir=str(tmp_path), **quiet) as run:
        run.log(loss=FakeCudaTensor(float("nan")))
        run.log(loss=FakeCudaTensor(1.0))
    lines = recorded(run.dir)
    assert [s["metrics"]["loss"] for s in lines.of("step")] == ["nan", 1.0]
    assert run.summary["nonfinite"]["loss"]["count"] == 1
    assert FakeCudaTensor.syncs == 0


def test_halt_on_nonfinite_reads_at_once(tmp_path, quiet, fake_cuda) -> None:
    with pytest.raises(Exception):
        with traintel.init(project="t", dir=str(tmp_path), halt_on_nonfinite=True, **quiet) as run:
            run.log(loss=FakeCudaTensor(float("inf")))
    assert FakeCudaTensor.syncs == 1 and run.summary["status"] == "failed"


def test_cpu_tensors_are_converted_at_once_and_detached(tmp_path, quiet, recorded) -> None:
    weight = torch.tensor(3.0, requires_grad=True)
    with traintel.init(project="t", dir=str(tmp_path), **quiet) as run:
        run.log(loss=weight * 2, samples=torch.tensor(4))
        assert run.state.latest["loss"] == 6.0  # at once: no deferral on CPU
    step = recorded(run.dir).of("step")[0]
    assert step["metrics"] == {"loss": 6.0, "samples": 4}
