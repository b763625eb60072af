"""summary.json: the run's figures, built from the aggregates the record writer folded line by
line, so they equal what a reader recomputes from events.jsonl."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .record import encode

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("traintel.record")


def build_summary(run: Run, end_ts: float) -> dict[str, Any]:
    state = run.state
    agg = run._writer.aggregates
    loss = agg.loss
    active = (agg.last_step_ts - agg.first_step_ts) \
        if agg.last_step_ts is not None and agg.first_step_ts else 0.0

    def per_second(n: float) -> float | None:
        return n / active if active > 0 else None

    step_time = agg.step_time.summary()
    evals = {}
    for name, last in state.eval_latest.items():
        evals[name] = {"last": last, "best": state.eval_best.get(name)}
    errors_by_type: dict[str, int] = {}
    for (error_type, _severity), count in state.errors.items():
        errors_by_type[error_type] = errors_by_type.get(error_type, 0) + count
    instruments = {entry.pop("name"): entry for entry in instrument_summaries(run)}
    return {
        "run": run.id, "project": run.project, "name": run.name, "rank": run.rank,
        "world_size": run.world_size, "status": state.status, "start_ts": state.start_ts,
        "end_ts": end_ts, "duration_s": end_ts - state.start_ts,
        "steps": agg.steps, "epochs": state.epoch + 1 if agg.steps else 0,
        "samples": agg.samples, "tokens": agg.tokens,
        "loss": {"final": loss.last, "best": loss.min if loss.count else None,
                 "min": loss.min if loss.count else None,
                 "max": loss.max if loss.count else None, "mean": loss.mean, "std": loss.std,
                 "count": loss.count, "nonfinite": agg.nonfinite_loss},
        "eval": evals,
        "throughput": {"steps_per_s": per_second(agg.steps),
                       "samples_per_s": per_second(agg.samples),
                       "tokens_per_s": per_second(agg.tokens)},
        "step_time": {"mean_s": step_time.get("mean"), "p50_s": step_time.get("p50"),
                      "p95_s": step_time.get("p95"), "p99_s": step_time.get("p99"),
                      "data_wait_fraction": agg.data_wait / agg.timed if agg.timed else None},
        "errors": {"total": sum(errors_by_type.values()), "by_type": errors_by_type},
        "instruments": instruments,
        "record": {"lines": agg.lines, "dropped": state.dropped},
        "config_hash": run.config_hash,
    }


def instrument_summaries(run: Run) -> list[dict[str, Any]]:
    """Every custom instrument, summarised once for both the record's ``instrument`` lines and
    summary.json: histograms, timers and operations from the writer's aggregates (p50/p95/p99),
    counters by their total, gauges by their last value."""
    entries = [{"name": name, "kind": kind, **stats.summary()}
               for (kind, name), stats in run._writer.aggregates.instruments.items()]
    entries += [{"name": name, "kind": "counter", "total": value}
                for name, value in run.state.counters.items()]
    entries += [{"name": name, "kind": "gauge", "last": value}
                for name, value in run.state.gauges.items()]
    return entries


def write_json(path: Path, data: Any, quiet: bool = False) -> bool:
    """Write ``path`` atomically (temp file + rename); a failure is a warning, not an error."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encode(data, indent=True))
        os.replace(tmp, path)
        return True
    except OSError as exc:
        if not quiet:
            log.warning("traintel could not write %s: %s", path, exc)
        return False
