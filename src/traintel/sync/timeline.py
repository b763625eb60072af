"""When ``traintel sync`` sends a segment's metrics: the times whose state never arrived.

Prometheus keeps what it received, so a sync must add points without contradicting any live
one. Counters are the delicate part: a counter that goes down, even by a rounding error, is a
reset to Prometheus, and ``rate()`` turns it into a spike. Three rules follow.

- A segment that exported nothing (``offline``, ``disabled``) gets the live export's cadence:
  a point every ``export_interval_s`` from its start, and one at its last line.
- A segment that exported live notes every export's outcome (``export`` lines). A point goes
  just after each failed export (:data:`NUDGE`, so never on a live sample's millisecond, which
  would be a duplicate with another value and make Prometheus refuse the whole write), and the
  time around a failed export gets the cadence the run would have had: from the export before
  it to the export after it, a point every ``export_interval_s``; so does the time between two
  exports further apart than :data:`LATE` intervals (an export that retried until the
  collector came back, delivered late). A failing export spends seconds retrying before the
  next collection, so during an outage the run collects less often than its interval; one
  point per failed export left most of an outage's windows empty. A
  point holds every line up to its time, and a live export after it holds at least as much
  once it is :data:`LAG` later (the live export's histograms and counts lag the training
  thread by up to a record flush, a second): points stay that far before a delivered export,
  and one goes exactly there, so no window of the interval's length is left empty and the
  sequence stays monotonic. A collector killed without warning may have lost what it had
  acknowledged just before (:data:`SUSPECT_S`): the delivered exports in the seconds before a
  failed one get a point just after them too.
- Where the record does not say (after the last noted export, or a record written before
  export notes existed) a point goes midway between the live export's ticks, as far as
  possible from any live sample, and one at the segment's last line. (The live reader collects
  only once its previous export has returned, so between two noted exports there is no live
  sample the record does not note.)

Times are whole milliseconds (Prometheus's resolution), increasing, and the same on every sync
of the same record: a repeated sync sends identical samples, which Prometheus ignores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: after a failed export, the sync's point: past the live sample's millisecond, whatever the
#: float rounding of its time
NUDGE = 0.002
#: seconds a sync's point keeps before a delivered live export: the live export's counts and
#: histograms are fed by the record writer, up to a flush (``flush_interval``, 1 s) and the
#: writing of it behind
LAG = 1.25
#: two noted exports further apart than this many intervals: the first was late (it retried
#: while the collector was away, then got through), and the time between is an outage too
LATE = 1.5
#: seconds before a failed export in which a delivered one may still have been lost: a
#: collector killed without warning loses what it acknowledged but had not yet written (the
#: shipped config batches for 1 s and reads its write-ahead log every 5 s); a point just after
#: each such export is harmless when it did arrive (a moment later, holding at least as much)
SUSPECT_S = 10.0
#: points of one segment at most (a month at the default 15 s is 173,000; a sync collects about
#: 1,000 a second): beyond, the cadence widens
MAX_POINTS = 200_000
#: how long after a segment's last line a noted export is believed
AFTER_LAST_S = 86400.0


def metric_times(
    mode: str | None,
    interval: float,
    start: float,
    last: float,
    exports: Iterable[tuple[float, bool]],
    resend: bool = False,
) -> list[int]:
    """The times (Unix milliseconds) at which a sync sends one segment's metrics.

    ``mode``: the segment's ``run_start`` ``export`` (None for records before it was written);
    ``interval``: seconds between live exports; ``start``/``last``: the segment's first and last
    line (its ``run_start``, its last); ``exports``: (collection time, delivered) of each live
    export the record notes;
    ``resend`` (``--all``): also after the exports that were delivered.
    """
    if not (math.isfinite(interval) and interval > 0):
        interval = 15.0
    if not (math.isfinite(start) and math.isfinite(last)) or last < start:
        return []
    # an export is believed from the segment's start to a day after its last line (a host's
    # clock can be off; a crafted "at": 1e13 cannot ask for billions of points)
    known = sorted(
        (at, ok) for at, ok in exports if math.isfinite(at) and start <= at <= last + AFTER_LAST_S
    )
    # the grid spans the lines and every export noted: whatever times a record holds, at most
    # MAX_POINTS points are made (plus one per export)
    end = max(last, known[-1][0]) if known else last
    interval = max(interval, (end - start) / MAX_POINTS)
    if mode in ("offline", "disabled"):
        return _milliseconds([*_grid(start + interval, interval, last), last])
    times: list[float] = []
    anchor = start
    before_ok = True  # the export before this one was delivered (or there was none)
    #: delivered exports a collector that vanished right after may have lost (SUSPECT_S)
    suspects = {a for a, b in zip(known, known[1:]) if a[1] and not b[1]}
    for index, (at, ok) in enumerate(known):
        if (at, ok) in suspects and not resend:
            failed_at = known[index + 1][0]
            back = index
            while back >= 0 and known[back][1] and failed_at - known[back][0] <= SUSPECT_S:
                times.append(known[back][0] + NUDGE)
                back -= 1
        if not (ok and before_ok) or at - anchor > LATE * interval:
            # around a failed export, or a late one (it retried for seconds before it got
            # through): the live cadence, from the export before to this one, and up to LAG
            # before this one when it was delivered
            end = at - (LAG if ok else NUDGE)
            grid = _grid(anchor + interval, interval, end)
            times += grid
            if ok and end > (grid[-1] if grid else anchor) + NUDGE:
                times.append(end)
        if resend or not ok:
            times.append(at + NUDGE)
        anchor, before_ok = at, ok
    if not (known and known[-1][0] >= last):  # no export after the last line: unknown
        times += _grid(anchor + interval / 2, interval, last)
        times.append(last)
    return _milliseconds(times)


def _grid(first: float, step: float, end: float) -> list[float]:
    """``first``, ``first + step``, ... while before ``end``."""
    count = max(0, math.ceil((end - first) / step)) if end > first else 0
    return [first + i * step for i in range(count)]


def _milliseconds(times: Iterable[float]) -> list[int]:
    """Whole milliseconds (rounded up: a point holds every line up to its time), increasing,
    one point per millisecond."""
    out: list[int] = []
    for t in sorted(times):
        ms = math.ceil(t * 1000)
        if not out or ms > out[-1]:
            out.append(ms)
    return out
