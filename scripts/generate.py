#!/usr/bin/env python3
"""Every generated file, from the code that is its one source: ``make generate`` writes them,
``python scripts/generate.py --check`` (a test) fails naming each file that is stale.

    prometheus/rules/*.yml        traintel.stack.rules.Config
    grafana/dashboards/*.json     traintel.stack.dashboards
    docs/metrics.md               traintel.core.catalog
    docs/configuration.md         traintel.run.settings and traintel.core.env
    docs/scaling.md               the capacity table and the sizing rows (traintel.stack.capacity)
    deploy/helm/traintel/...      the chart's rules, dashboards and collector tiers, and
    deploy/slurm/...              the SLURM node collector, from the files above and
                                  otel-collector/config.yaml (traintel.stack.deploy)

Add a generated file here, not as a Makefile target of its own.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from traintel.core import catalog  # noqa: E402  (the checkout's sources, first on the path)
from traintel.run import settings  # noqa: E402
from traintel.stack import capacity, dashboards, deploy, rules  # noqa: E402


def _scaling(text: str) -> str:
    """docs/scaling.md with its generated parts replaced: the capacity table between its markers,
    and the sizing table's series and samples/s rows."""
    text = re.sub(
        r"(<!-- capacity-table -->\n).*?(\n<!-- /capacity-table -->)",
        lambda m: m.group(1) + capacity.render_table() + m.group(2),
        text,
        flags=re.S,
    )
    return re.sub(
        r"^\| active series \(catalog \+ span metrics \+ recording rules\) \|.*\n"
        r"\| samples/s \|.*$",
        lambda m: capacity.render_sizing_rows(),
        text,
        count=1,
        flags=re.M,
    )


def outputs() -> dict[Path, Callable[[str], str]]:
    """Each generated file and how to make it from its current text."""
    made: dict[Path, Callable[[str], str]] = {}
    for name in rules.FILES:
        made[ROOT / "prometheus" / "rules" / f"{name}.yml"] = lambda _, name=name: rules.render(
            name
        )
    for name, data in dashboards.build().items():
        made[ROOT / "grafana" / "dashboards" / f"{name}.json"] = lambda _, data=data: (
            dashboards.render(data)
        )
    made[ROOT / "docs" / "metrics.md"] = lambda _: catalog.render_markdown()
    made[ROOT / "docs" / "configuration.md"] = lambda _: settings.render_markdown()
    made[ROOT / "docs" / "scaling.md"] = _scaling
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; fail naming every stale file"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, make in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        wanted = make(current)
        if wanted != current:
            stale.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    # then what is made from those as written: the chart's copies, its collector tiers
    stale += deploy.stale(ROOT) if args.check else deploy.write(ROOT)
    if args.check and stale:
        print("stale generated files (run `make generate`):\n  " + "\n  ".join(stale))
        return 1
    print(("written: " + ", ".join(stale)) if stale else "every generated file is current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
