"""What `traintel logs` computes (traintel.reports.analysis), on record lines built in the test: the
summary across ranks, problems, instruments, plot series, search and comparison."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traintel.reports import analysis

T0 = 1_700_000_000.0


def step(n: int, rank: int = 0, **metrics) -> dict:
    return {
        "ts": T0 + n,
        "type": "step",
        "level": "info",
        "rank": rank,
        "step": n,
        "epoch": 0,
        "step_s": 1.0,
        "data_wait_s": 0.25,
        "metrics": metrics,
    }


def summary_of(lines: list[dict], percentiles: bool = False) -> analysis.Summary:
    summary = analysis.Summary(percentiles=percentiles)
    analysis.scan(lines, summary)
    return summary


def test_training_figures_come_from_the_lowest_rank_and_counts_from_all() -> None:
    lines = [step(n, rank, loss=4.0 / n, samples=8) for n in range(1, 5) for rank in (1, 0)]
    lines += [
        step(5, 1, loss=0.1),
        {
            "ts": T0 + 9,
            "type": "run_end",
            "level": "warning",
            "status": "interrupted",
            "duration_s": 9.0,
            "rank": 1,
        },
        {
            "ts": T0 + 9,
            "type": "run_end",
            "level": "info",
            "status": "finished",
            "duration_s": 8.5,
            "rank": 0,
        },
    ]
    result = summary_of(lines).result()
    assert result["steps"] == 5  # the rank with the most steps
    loss = result["loss"]
    assert (result["samples"], loss["final"], loss["best"], loss["nonfinite"]) == (32, 1.0, 1.0, 0)
    assert result["throughput"]["steps_per_s"] == pytest.approx(4 / 4.0)  # rank 0, first step too
    assert (result["status"], result["duration_s"]) == ("interrupted", 9.0)  # the worst rank's
    assert result["ranks"] == [0, 1] and result["by_type"] == {"step": 9, "run_end": 2}


def test_a_torn_or_foreign_step_line_is_counted_but_not_folded() -> None:
    result = summary_of(
        [
            {"type": "step", "metrics": {"loss": 1.0}},
            {"ts": "yesterday", "type": "step"},
            step(1, loss="nan"),
        ]
    ).result()
    assert (result["events"], result["steps"], result["loss"]["nonfinite"]) == (3, 1, 1)


def test_the_reports_step_times_keep_percentiles() -> None:
    summary = summary_of([step(n) for n in range(1, 11)], percentiles=True)
    assert summary.step_time() == {"mean": 1.0, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0}
    assert summary_of([]).step_time() == dict.fromkeys(("mean", "p50", "p95", "p99", "max"))


def test_problems_are_grouped_by_kind_worst_first() -> None:
    problems = analysis.Problems()
    analysis.scan(
        [
            {"ts": 1.0, "type": "log", "level": "warning", "logger": "traintel.data"},
            {
                "ts": 2.0,
                "type": "error",
                "level": "critical",
                "error_type": "oom",
                "exc_type": "OutOfMemoryError",
                "message": "CUDA out of memory",
            },
            {"ts": 3.0, "type": "log", "level": "warning", "logger": "traintel.data"},
            {"ts": 4.0, "type": "step", "level": "info"},
        ],
        problems,
    )
    groups = problems.result()["groups"]
    assert [(g["type"], g["kind"], g["count"], g["level"]) for g in groups] == [
        ("error", "oom", 1, "critical"),
        ("log", "traintel.data", 2, "warning"),
    ]
    assert (groups[1]["first_ts"], groups[1]["last_ts"]) == (1.0, 3.0)


def test_instruments_keep_each_ranks_last_line() -> None:
    instruments = analysis.Instruments("timer")
    analysis.scan(
        [
            {"type": "instrument", "kind": "timer", "name": "io", "count": 1},
            {"type": "instrument", "kind": "timer", "name": "io", "count": 2},
            {"type": "instrument", "kind": "counter", "name": "n", "total": 1},
        ],
        instruments,
    )
    (found,) = instruments.result()
    assert (found["name"], found["count"], found["rank"]) == ("io", 2, None)


def test_series_follow_the_lowest_rank_even_when_it_comes_later() -> None:
    series = analysis.Series()
    analysis.scan(
        [
            step(1, 1, loss=9.0),
            step(1, 0, loss="inf", samples=4, mem_gb=1.5),
            step(2, 0, loss=0.5, samples=4),
            step(2, 1, loss=8.0),
        ],
        series,
    )
    assert (series.rank, series.rate_unit) == (0, "samples/s")
    assert series.loss == [(2, 0.5)] and series.nonfinite == [1]  # the inf step marked apart
    assert series.rate == [(1, 4.0), (2, 4.0)] and series.memory == {"mem_gb": [(1, 1.5)]}


def test_grep_and_alert_rules_match_key_value_text() -> None:
    lines = [
        step(1, loss=1.5),
        {
            "ts": T0 + 5,
            "type": "event",
            "level": "warning",
            "event": "checkpoint",
            "fields": {"path": "/ckpt/1.pt"},
        },
    ]
    assert [r["type"] for r in analysis.grep(lines, r"metrics\.loss=1\.5")] == ["step"]
    assert [r["type"] for r in analysis.grep(lines, ".", events=["checkpoint"])] == ["event"]
    assert list(analysis.grep(lines, ".", level="error")) == []
    assert list(analysis.grep(lines, ".", since=T0 + 2)) == lines[1:]
    assert analysis.alert_rule("warning")(lines[1]) and not analysis.alert_rule("warning")(lines[0])
    assert analysis.alert_rule(r"fields\.path=/ckpt")(lines[1])


def test_parse_time() -> None:
    assert analysis.parse_time("10m", now=1000.0) == 400.0
    assert analysis.parse_time("1.5h", now=10_000.0) == 4600.0
    assert analysis.parse_time("1700000000") == 1_700_000_000.0
    assert analysis.parse_time("2023-11-14T22:13:20+00:00") == 1_700_000_000.0
    with pytest.raises(ValueError, match="not an ISO time"):
        analysis.parse_time("yesterday")


def test_compare_keeps_only_differing_config_keys() -> None:
    base = {
        "path": "/runs/a",
        "status": "finished",
        "steps": 1,
        "duration_s": 1.0,
        "throughput": {"steps_per_s": 1.0, "samples_per_s": None},
        "loss": {"final": 1.0, "best": 1.0},
        "errors": 0,
        "warnings": 0,
    }
    rows = analysis.compare(
        [
            {
                **base,
                "run": "a",
                "config": {"lr": 0.1, "model": {"layers": 2}},
                "eval": {"val_loss": {"last": 0.5, "best": 0.4}},
            },
            {
                **base,
                "run": None,
                "path": "/runs/b",
                "config": {"lr": 0.2, "model": {"layers": 2}},
                "eval": {},
            },
        ]
    )
    assert [list(row)[:3] for row in rows] == [["run", "status", "config.lr"]] * 2
    assert [(r["run"], r["config.lr"], r["val_loss_best"]) for r in rows] == [
        ("a", 0.1, 0.4),
        ("b", 0.2, None),
    ]


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = (
    "ts",
    "type",
    "level",
    "rank",
    "step",
    "step_s",
    "data_wait_s",
    "metrics",
    "status",
    "duration_s",
    "error_type",
    "event",
    "logger",
    "kind",
    "name",
    "fields",
    "config",
)
lines = st.lists(
    st.dictionaries(
        st.sampled_from(KEYS),
        st.one_of(
            json_values,
            st.sampled_from(
                ["step", "error", "run_end", "run_start", "eval", "instrument", "log", "warning"]
            ),
        ),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(lines)
def test_any_lines_a_file_may_hold_never_break_a_summary(found: list[dict]) -> None:
    """Records are read from files a crash, a foreign writer or a person may have written."""
    summary = analysis.Summary(percentiles=True)
    try:
        analysis.scan(found, summary)
        result = summary.result()
        summary.step_time()
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc} on {found!r}") from exc
    assert result["events"] == len(found)
