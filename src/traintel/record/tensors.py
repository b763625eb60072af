"""0-d accelerator tensors logged without a host-device synchronisation.

``run.log(loss=loss)`` with ``loss`` on a GPU used to call ``loss.item()`` at once: the CPU
waited there until the GPU had finished every kernel queued before it, so it could not queue the
next step's work ahead, the most common hidden cost of logging in PyTorch. Here such a tensor is
detached (its autograd graph is not kept), copied to the host with ``non_blocking=True`` (into
pinned memory, queued on the device's current stream like any kernel), and an event is recorded
behind the copy. The step goes to the record writer as usual with a :class:`Deferred` in place
of the number; the writer thread waits for the event, reads the number and puts it where the
number would have been, before it writes the step: values arrive in the record, the summary and
export in step order. A non-finite value is flagged there as ``run.log`` would have.

What changes for the user: the exported latest value of such a metric follows the writer (every
``flush_interval``, 1 s by default), not the call; ``halt_on_nonfinite`` needs the value at once,
so with it a tensor is converted at once, as before. CPU tensors, NumPy scalars and numbers are
converted at once: that costs no synchronisation. ``samples`` and ``tokens`` are converted at
once (they are added up on the training thread).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from traintel.core.state import nonfinite_text
from traintel.core.validate import to_number

log = logging.getLogger("traintel.record")

#: device type -> how to make an event that completes when the device reaches it (``torch.Event``
#: for any device that has one; tests add a stand-in for a device this machine lacks)
EVENT_FACTORIES: dict[str, Callable[[Any], Any]] = {}
#: keys converted at once whatever their type (the training thread adds them up)
AT_ONCE = frozenset({"samples", "tokens"})
#: whether a Deferred was ever made in this process (the writer looks for them only then)
waiting = False


class Deferred:
    """A value still on its way from an accelerator: its host copy and the event behind it."""

    __slots__ = ("key", "host", "event", "on_nonfinite", "latest")

    def __init__(
        self,
        key: str,
        host: Any,
        event: Any,
        on_nonfinite: Callable[[str, str, int], None],
        latest: MutableMapping[str, Any],
    ) -> None:
        self.key, self.host, self.event = key, host, event
        self.on_nonfinite, self.latest = on_nonfinite, latest

    def resolve(self, step: int) -> float | int | str:
        """Wait for the copy (on the writer thread), and return the number (non-finite: its
        text, flagged); the run's latest value of the key follows."""
        self.event.synchronize()
        value: float | int | str = to_number("run.log", self.key, self.host.item())
        if value - value != 0:  # type: ignore[operator]  # a number here
            value = nonfinite_text(value)  # type: ignore[arg-type]
            self.on_nonfinite(self.key, value, step)
        else:
            self.latest[self.key] = value
        return value


def defer(
    key: str,
    value: Any,
    on_nonfinite: Callable[[str, str, int], None],
    latest: MutableMapping[str, Any],
) -> Deferred | None:
    """A :class:`Deferred` for a one-element tensor on an accelerator; None for anything else
    (converted at once by the caller, as before)."""
    global waiting
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, torch.Tensor) or value.is_cpu or key in AT_ONCE:
        return None  # a CPU tensor first: the common case on CPU pays one attribute
    device = value.device
    if device.type == "meta" or value.numel() != 1:
        return None  # cheap at once, or an error the caller words
    try:
        factory = EVENT_FACTORIES.get(device.type)
        event = factory(device) if factory is not None else torch.Event(device=device)
        host = value.detach().to("cpu", non_blocking=True)
        event.record()
    except Exception:  # a device without events (or copies): at once, synchronising
        return None
    waiting = True
    return Deferred(key, host, event, on_nonfinite, latest)


def resolve(metrics: MutableMapping[str, Any], step: int) -> None:
    """Replace each :class:`Deferred` of a step's metrics by its value (the writer thread)."""
    for key, value in metrics.items():
        if type(value) is Deferred:
            try:
                metrics[key] = value.resolve(step)
            except Exception as exc:  # a failed device: the value is lost, the step is kept
                metrics[key] = "nan"
                log.warning(
                    "traintel: the value of %r at step %d could not be read from its "
                    "device (%s: %s); recorded as nan",
                    key,
                    step,
                    type(exc).__name__,
                    exc,
                )
