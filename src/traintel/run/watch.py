"""``watch``: a model's size, and its global gradient norm each step without user code.

    watch(run, model)                 # or run.watch(model)
    for batch in run.track(loader):
        loss = model(batch).loss; loss.backward(); optimizer.step()   # grad_norm recorded here
        run.log(loss=loss.item())

The norm is computed in an optimizer step pre-hook (``torch.optim`` global hooks), so it sees
the gradients the optimizer is about to apply: accumulated over micro-batches, unscaled by a
``GradScaler``, and after any clipping the user did (with clipping, log the pre-clip value
``clip_grad_norm_`` returns instead). ``register_full_backward_hook`` would fire per module and
per micro-batch, before accumulation is complete.

Cost: one fused ``torch.nn.utils.get_total_norm`` over all gradients (per-device ``foreach``
kernels, no per-parameter sync) and one ``.item()`` per optimizer step. On a GPU that ``.item()``
waits for the backward pass to finish, so the CPU cannot queue the optimizer step ahead of it;
pass ``grad_norm=False`` where that matters. Under FSDP or tensor parallelism each rank sees its
shard's gradients, so the value is the shard's norm, not the global one.

The norm is logged with ``commit=False``: it joins the step under way (the one ``run.track``
is timing, or the one the loop's next ``run.log`` ends), never a step of its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, SupportsFloat

from traintel.run import live

if TYPE_CHECKING:
    import torch

    from traintel.core.state import RunState
    from traintel.record.format import Level
    from traintel.run.instruments import Gauge


class Watched(Protocol):
    """What ``watch`` needs of a run (``traintel.run.facade.Run`` is one)."""

    @property
    def state(self) -> RunState: ...

    @property
    def in_track(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    def event(self, name: str, level: Level = ..., **fields: object) -> None: ...

    def gauge(self, name: str) -> Gauge: ...

    def log(
        self,
        values: Mapping[str, SupportsFloat] | None = ...,
        /,
        step: int | None = ...,
        *,
        commit: bool = ...,
        step_s: float | None = ...,
        **metrics: SupportsFloat,
    ) -> None: ...


@dataclass
class Watch:
    """What ``watch`` found, and the hook it installed (``remove()`` takes it out)."""

    parameters: int
    trainable: int
    bytes: int
    _handle: Any = field(default=None, repr=False)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def watch(run: Watched, model: torch.nn.Module, grad_norm: bool = True) -> Watch:
    """Record ``model``'s parameter counts (a ``model_parameters`` event and three gauges) and,
    with ``grad_norm``, its global L2 gradient norm at every optimizer step."""
    import torch

    from traintel.run.optim_hooks import on_optimizer_step

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    watched = Watch(
        parameters=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in trainable),
        bytes=sum(p.numel() * p.element_size() for p in params),
    )
    run.event(
        "model_parameters",
        model=model_class(model),
        parameters=watched.parameters,
        trainable=watched.trainable,
        bytes=watched.bytes,
    )
    run.gauge("model_parameters").set(watched.parameters)
    run.gauge("model_trainable_parameters").set(watched.trainable)
    run.gauge("model_parameter_bytes").set(watched.bytes)
    if grad_norm and trainable:
        owned = {id(p) for p in trainable}

        def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if run.finished:  # stop watching (safe here: traintel.run.optim_hooks)
                watched.remove()
                return
            group = optimizer.param_groups[0]["params"] if optimizer.param_groups else []
            if not group or id(group[0]) not in owned:
                return  # another model's optimizer
            grads = [p.grad for p in trainable if p.grad is not None]
            if not grads:
                return
            norm = torch.nn.utils.get_total_norm(grads).item()
            run.log(grad_norm=norm, commit=False)  # a value of the step under way

        watched._handle = on_optimizer_step(before_step)
        _watches.setdefault(run, []).append(watched)
    return watched


#: each run's watches, taken out when it ends (``release``)
_watches: weakref.WeakKeyDictionary[Watched, list[Watch]] = weakref.WeakKeyDictionary()


def release(run: object) -> None:
    """Take out ``run``'s hooks (at its end: ``traintel.run.live.on_end``), so that they leave the
    process as they found it and the next run in the same process watches the same model, or
    another, afresh."""
    for watched in _watches.pop(run, ()):  # type: ignore[call-overload]  # any run: a no-op
        watched.remove()


live.on_end.append(release)


def model_class(model: object) -> str:
    """The model's own class name, also through ``torch.compile``'s ``OptimizedModule`` (and
    DDP/FSDP-style wrappers that keep the model as ``module``), not the wrapper's."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            break
        model = inner
    return type(model).__name__
