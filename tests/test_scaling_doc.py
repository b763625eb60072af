"""docs/scaling.md sizes a 1,000- and a 10,000-GPU job from `traintel.stack.capacity`: when the catalog
changes what a GPU rank exports, the sizing must change with it (as the capacity table does)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from traintel.stack import capacity

DOC = (Path(__file__).resolve().parents[1] / "docs/scaling.md").read_text()
#: recording-rule series per rank that the sizing adds (prometheus/rules/recording.yml)
RECORDING_PER_RANK = 11


@pytest.mark.parametrize("gpus", [1_000, 10_000])
def test_sizing_rows_follow_the_capacity_calculator(gpus: int) -> None:
    workload = dict(capacity.TABLE)["64 nodes, 512 GPUs"]  # the table's standard workload
    workload = dataclasses.replace(workload, ranks=gpus)
    catalog = capacity.series_per_run(workload)
    spans = capacity.spanmetrics_series_per_run(workload)
    rules = RECORDING_PER_RANK * gpus
    total = catalog + spans + rules
    assert f"{catalog:,} + {spans:,} + {rules:,} = {total:,}" in DOC
    row = re.search(r"^\| samples/s \| ([\d,]+) \| ([\d,]+) \|$", DOC, re.MULTILINE)
    assert row, "docs/scaling.md lost its samples/s sizing row"
    quoted = int(row.group(1 if gpus == 1_000 else 2).replace(",", ""))
    assert quoted == pytest.approx(total / 15, rel=0.01)  # every series every 15 s
