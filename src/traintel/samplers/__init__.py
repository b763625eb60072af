"""Background sampling of GPU, CUDA allocator and system telemetry.

Samplers are read on one daemon thread every few seconds, never on the training hot path. Each
sampler returns readings named by the catalog; the thread hands every batch to a callback (the
core keeps the latest batch and the exporters read it at collection time). A sampler can fail in
any way: the thread logs it once, disables it after a few consecutive failures, and carries on.
Samplers that notice events (an NVIDIA Xid error) hand them over after each sample, and the
thread passes them to a second callback (the core records each as a run event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from traintel.core.forks import reset_in_child
from traintel.samplers.base import EventSource, Sample, Sampler, SamplerEvent

#: the samplers' own logger (the default of ``SamplerThread``'s)
_LOG = logging.getLogger("traintel.samplers")

#: Consecutive failures after which a sampler is switched off for the rest of the run.
MAX_FAILURES = 3
#: Longest sample_now waits for a sample already under way on the thread.
LOCK_WAIT_S = 2.0


class SamplerThread:
    """One daemon thread reading every sampler each ``interval_s`` seconds."""

    def __init__(
        self,
        samplers: Sequence[Sampler],
        interval_s: float = 5.0,
        on_readings: Callable[[list[Sample]], None] = lambda readings: None,
        logger: logging.Logger = _LOG,
        on_events: Callable[[list[SamplerEvent]], None] = lambda events: None,
    ) -> None:
        self.samplers = list(samplers)
        self.interval_s = interval_s
        self.on_readings = on_readings
        self.on_events = on_events
        #: events collected by sample_now, handed to on_events by the thread's next round
        self._events: list[SamplerEvent] = []
        self.log = logger
        self._failures = {id(s): 0 for s in self.samplers}
        self._logged: set[int] = set()  # samplers (and the callback, id(self)) already logged
        self._lock = threading.Lock()  # sample_now from another thread vs. the sampler thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traintel-samplers", daemon=True)
        reset_in_child(self._after_fork_in_child)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Wake the thread, wait up to ``timeout`` s for it, then close the samplers."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            return  # still inside a sampler call: closing under it could crash; it is a daemon
        with self._lock:
            for sampler in self.samplers:
                self._close(sampler)
            self.samplers = []

    def _after_fork_in_child(self) -> None:
        """A forked child has no sampler thread and must not touch the parent's NVML handles."""
        self._lock = threading.Lock()  # the thread may have held it at the fork
        self._stop.set()
        self.samplers = []

    def sample_now(self) -> list[Sample]:
        """Read every enabled sampler once, synchronously (tests, crash reports).

        Returns nothing if the sampler thread has been inside a sample for ``LOCK_WAIT_S``: a hung
        driver call must not hang a crash report too.
        """
        readings: list[Sample] = []
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            return readings
        try:
            for sampler in list(self.samplers):
                try:
                    readings.extend(sampler.sample())
                    if isinstance(sampler, EventSource):
                        self._events.extend(sampler.events())
                except Exception:
                    self._failed(sampler)
                else:
                    self._failures[id(sampler)] = 0
        finally:
            self._lock.release()
        return readings

    def _failed(self, sampler: Sampler) -> None:
        key = id(sampler)
        self._failures[key] += 1
        if key not in self._logged:
            self._logged.add(key)
            self.log.warning(
                "traintel sampler %r failed (logged once)", sampler.name, exc_info=True
            )
        if self._failures[key] >= MAX_FAILURES:
            self.log.warning(
                "traintel sampler %r failed %d times in a row: disabled for this run",
                sampler.name,
                MAX_FAILURES,
            )
            self.samplers.remove(sampler)
            self._close(sampler)

    def _close(self, sampler: Sampler) -> None:
        try:
            sampler.close()
        except Exception:
            self.log.debug("closing sampler %r failed", sampler.name, exc_info=True)

    def _loop(self) -> None:
        while True:
            readings = self.sample_now()
            with self._lock:
                events, self._events = self._events, []
            try:
                self.on_readings(readings)
                if events:
                    self.on_events(events)
            except Exception:
                if id(self) not in self._logged:
                    self._logged.add(id(self))
                    self.log.warning(
                        "traintel sampler callback failed (logged once)", exc_info=True
                    )
            if self._stop.wait(self.interval_s):
                return


def start_sampling(
    readings: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    run_dir: str,
    interval_s: float,
    *,
    local_rank: int | None,
    all_gpus: bool = False,
    on_events: Callable[[list[SamplerEvent]], None] = lambda events: None,
) -> SamplerThread:
    """A started sampler thread of the default samplers, keeping the latest value of each
    (metric, labels) in ``readings`` (the run state's, read by the exporters) and handing
    events (an Xid error) to ``on_events``."""

    def store(batch: list[Sample]) -> None:
        for name, value, labels in batch:
            readings[(name, tuple(sorted(labels.items())))] = value

    thread = SamplerThread(
        default_samplers(run_dir, local_rank=local_rank, all_gpus=all_gpus),
        interval_s=interval_s,
        on_readings=store,
        on_events=on_events,
    )
    thread.start()
    return thread


def default_samplers(
    run_dir: str, *, local_rank: int | None, all_gpus: bool = False
) -> list[Sampler]:
    """System, NVML and CUDA-allocator samplers, leaving out those this machine cannot run."""
    from traintel.samplers.cuda import cuda_sampler
    from traintel.samplers.gpu import gpu_sampler
    from traintel.samplers.system import SystemSampler

    samplers: list[Sampler] = [SystemSampler(run_dir)]
    for sampler in (gpu_sampler(local_rank=local_rank, all_gpus=all_gpus), cuda_sampler()):
        if sampler is not None:
            samplers.append(sampler)
    return samplers


__all__ = [
    "LOCK_WAIT_S",
    "MAX_FAILURES",
    "Sample",
    "Sampler",
    "SamplerEvent",
    "SamplerThread",
    "default_samplers",
    "start_sampling",
]
