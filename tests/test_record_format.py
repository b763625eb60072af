"""docs/record-format.md against what is written: every documented field of every line type,
config.json and summary.json exists in a record that uses every feature, and every field
written is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conftest import read_lines
from traintel.testing import capture

DOC = (Path(__file__).resolve().parents[1] / "docs" / "record-format.md").read_text()
#: fields every line may have, described in the text above the tables
COMMON = {"ts", "type", "level", "run", "rank", "trace_id", "span_id", "message"}
#: an instrument line's statistics, listed in its section's text
STATISTICS = {"count", "total", "mean", "std", "min", "max", "last", "p50", "p95", "p99"}


def documented_tables() -> dict[str, list[str]]:
    """Section title -> the backticked names in the first column of its table."""
    tables: dict[str, list[str]] = {}
    for section in re.split(r"^#{2,3} ", DOC, flags=re.M)[1:]:
        title, _, body = section.partition("\n")
        fields = re.findall(r"^\| `([^`]+)` \|", body, re.M)
        if fields:
            tables[title.strip().strip("`")] = fields
    return tables


def a_record_using_everything(quiet_run) -> tuple[list[dict[str, Any]], Path]:
    with capture():  # exporting (to memory): the record notes each export's outcome
        return _everything(quiet_run)


def _everything(quiet_run) -> tuple[list[dict[str, Any]], Path]:
    for segment in (1, 2):
        with quiet_run(
            run_id="all",
            resume=True,
            config={"lr": 0.1 * segment},
            tags=["doc"],
            notes="every feature",
            group="docs",
            total_steps=8,
        ) as run:
            run.config.update({f"added_{segment}": True})
            for epoch in run.epochs(2, start=segment - 1):
                for _ in run.track(range(2)):
                    run.log(
                        loss=float("nan") if segment == 2 else 1.0,
                        samples=2,
                        tokens=8,
                        **{"train/acc": 0.5},
                    )
                run.log_values(train_acc=0.5)
                run.log_eval(val_loss=0.5, score=1.0)
            run.event("checkpoint", path="x.pt")
            run.error(ValueError("bad batch"), operation="data")
            run.logger("data").info("shard", extra={"shard": 3})
            run.timer("forward").observe(0.1)
            run.counter("skipped").inc()
            run.log(lr=0.1, commit=False)  # W&B's habit: marked uncommitted in the step
            run.log(samples=2, step=run.state.step + 1)
            run.log(late=1.0, commit=False)  # nothing commits it: joins the last step
            run.summary["best"] = 1.0
    return read_lines(run.dir), run.dir


def test_every_documented_field_is_written_and_every_written_field_documented(quiet_run):
    lines, run_dir = a_record_using_everything(quiet_run)
    tables = documented_tables()
    types = re.search(r"`type` \| str \| (.*?) \|", DOC).group(1)
    documented_types = re.findall(r"`(\w+)`", types)
    assert {line["type"] for line in lines} == set(documented_types)
    for kind in documented_types:
        of_kind = [line for line in lines if line["type"] == kind]
        written = set().union(*(line.keys() for line in of_kind))
        documented = set(tables[kind])
        for field in documented:
            assert any(field in line for line in of_kind), f"{kind}.{field} is never written"
        extra = STATISTICS if kind == "instrument" else set()
        assert written - COMMON - extra <= documented, (
            f"{kind}: undocumented {written - COMMON - extra - documented}"
        )

    config = json.loads((run_dir / "config.json").read_text())
    assert set(config) == set(tables["config.json"])

    summary = json.loads((run_dir / "summary.json").read_text())
    for path in tables["summary.json"]:
        value: Any = summary
        for part in path.split("."):
            if part.startswith("<"):  # <metric>, <name>: any one of them
                assert value, f"summary.json {path}: nothing under it"
                part = next(iter(value))
            assert part in value, f"summary.json has no {path}"
            value = value[part]
    top = {path.split(".")[0] for path in tables["summary.json"]}
    assert set(summary) == top
    segment_fields = re.search(r"each segment: (.*?) \|", DOC).group(1)
    assert set(summary["segments"][0]) == set(re.findall(r"`(\w+)`", segment_fields)) - {"crashed"}


def test_every_line_written_is_its_record_format_type(quiet_run):
    """Writer and reader cannot drift from ``traintel.record.format``: every line of a record
    using every feature, read back, has each required key of its line type's TypedDict and no
    key that type does not declare."""
    import typing

    from traintel.record import format as record_format

    by_type = {}
    for line_type in typing.get_args(record_format.RecordLine):
        (name,) = typing.get_args(typing.get_type_hints(line_type)["type"])
        by_type[name] = line_type
    lines, _ = a_record_using_everything(quiet_run)
    assert {line["type"] for line in lines} == set(by_type)
    for line in lines:
        line_type = by_type[line["type"]]
        declared = line_type.__required_keys__ | line_type.__optional_keys__
        assert line_type.__required_keys__ - {"ts", "level", "run", "rank"} <= set(line), (
            line["type"],
            line_type.__required_keys__ - set(line),
        )
        assert set(line) <= declared, (line["type"], set(line) - declared)
