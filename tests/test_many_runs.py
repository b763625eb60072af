"""Many runs in one process (a sweep, a notebook): each run leaves nothing behind."""

from __future__ import annotations

import gc
import tracemalloc

import traintel
from traintel import forks


def test_memory_and_objects_stay_flat_over_a_thousand_runs(tmp_path, quiet) -> None:
    """Each run registered four ``os.register_at_fork`` callbacks (and the SDK's tracer provider
    a fifth), which can never be unregistered: +24 KB and +42 objects per run, ~24 MB per 1,000
    trials. Now the process registers once and a run's resets go with it."""

    def trial(number: int) -> None:
        with traintel.init(project="flat", dir=str(tmp_path), group="sweep", **quiet) as run:
            for step in range(3):
                run.log(loss=1.0 / (step + 1 + number))

    for number in range(30):  # warm: caches, lazy imports, the process's own registrations
        trial(number)
    gc.collect()
    tracemalloc.start()
    try:
        objects, (memory, _) = len(gc.get_objects()), tracemalloc.get_traced_memory()
        for number in range(1000):
            trial(number)
        gc.collect()
        grown_objects = len(gc.get_objects()) - objects
        grown_memory = tracemalloc.get_traced_memory()[0] - memory
    finally:
        tracemalloc.stop()
    # a few hundred objects of slack: caches that settle (was ~42,000 and ~24 MB)
    assert grown_objects < 1000, grown_objects
    assert grown_memory < 256 * 1024, grown_memory
    assert forks.pending() < 10  # the ended runs' resets are gone, not only dead
