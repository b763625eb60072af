"""Build every program ``make test`` runs, once, into ``~/.cache/traintel/bin``: the stack's
(collector, Prometheus, Alertmanager, ...) and then the deploy checks' (helm, kubeconform,
kube-apiserver with etcd, the Prometheus Operator, Thanos, ...).

scripts/test.sh starts it in the background before the Python environment exists, on the
standard library alone (the installer imports nothing else), so that the Go builds (CPU-bound)
run while pip downloads; inside the environment ``traintel stack install`` then waits for it
through the installer's lock and finds everything built. A failed build is recorded in
``bin/status.json`` as it always is: the tests that need the program skip saying why, and
``traintel stack install`` tries a required one again.
"""

from __future__ import annotations

from traintel.stack import install
from traintel.stack.components import COMPONENTS, DEPLOY_TOOLS


def main() -> None:
    for table in (COMPONENTS, DEPLOY_TOOLS):
        install.install(table=table, say=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
