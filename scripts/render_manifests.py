"""Render deploy/helm/traintel to plain Kubernetes manifests, for clusters managed without Helm.

    make manifests ARGS="--values deploy/helm/traintel/ci/standalone-values.yaml --output traintel.yaml"
    kubectl apply --server-side -f traintel.yaml

Helm itself is built once from its Go module by traintel's installer into ~/.cache/traintel/bin
(the same build the tests use), so nothing but Go is needed. The output is what ``helm template``
renders: the repository's rules and dashboards as they are in this checkout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS

CHART = Path(__file__).resolve().parents[1] / "deploy/helm/traintel"
#: the Kubernetes version the chart is validated against (tests/deploy_tools.py)
KUBE_VERSION = "1.36.3"


def helm() -> str:
    """The helm binary, built first if needed."""
    status = install.install(
        ["helm"], say=lambda line: print(line, file=sys.stderr), table=DEPLOY_TOOLS
    )
    found = install.binary("helm")
    if found is None:
        sys.exit(f"helm could not be built: {status['helm']['reason']}")
    return str(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--values",
        "-f",
        action="append",
        default=[],
        help="a values file (repeatable); e.g. one of deploy/helm/traintel/ci/",
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, as helm --set")
    parser.add_argument("--release", default="traintel", help="release name (default traintel)")
    parser.add_argument(
        "--namespace",
        default="observability",
        help="namespace of the collectors and rules (default observability)",
    )
    parser.add_argument(
        "--kube-version",
        default=KUBE_VERSION,
        help=f"the cluster's Kubernetes version (default {KUBE_VERSION})",
    )
    parser.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    command = [
        helm(),
        "template",
        args.release,
        str(CHART),
        "--namespace",
        args.namespace,
        "--kube-version",
        args.kube_version,
    ]
    for path in args.values:
        command += ["-f", path]
    for pair in args.set:
        command += ["--set", pair]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    if args.output:
        args.output.write_text(result.stdout)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(result.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
