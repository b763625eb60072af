# The two commands of the README. Both set everything up on a fresh machine and are cached
# under ~/.cache/traintel/ so a warm machine pays once.
.PHONY: demo test typecheck bench soak generate manifests

## An instrumented demo training run (small PyTorch model, synthetic data, CPU).
demo:
	@scripts/venv.sh traintel demo $(ARGS)

## The whole test suite: installs the native stack programs (once), then runs pytest.
test:
	@scripts/test.sh $(ARGS)

## mypy over src/ (also part of `make test`).
typecheck:
	@scripts/venv.sh python -m mypy

## Side-by-side benchmarks (writes benchmarks/results/*.json).
bench:
	@TRAINTEL_EXTRAS=dev,bench scripts/venv.sh python -m benchmarks $(ARGS)

## Soak (not part of `make test`): ranks against the native stack while the collector and
## Prometheus are killed and a rank is preempted, then the record checked against Prometheus
## (benchmarks/soak.py; writes benchmarks/results/soak.json). Longer: make soak ARGS="--minutes 30"
soak:
	@scripts/venv.sh python -m benchmarks.soak $(ARGS)

## Regenerate every generated file from its one source (scripts/generate.py lists them: rules,
## dashboards, docs/metrics.md, docs/configuration.md, docs/scaling.md's tables, the Helm chart's
## copies and collector tiers, the SLURM node collector); a test fails when one is stale.
generate:
	@scripts/venv.sh python scripts/generate.py

## Plain Kubernetes manifests from the Helm chart, for clusters without Helm (docs/kubernetes.md):
## make manifests ARGS="--values deploy/helm/traintel/ci/standalone-values.yaml --output traintel.yaml"
manifests:
	@scripts/venv.sh python scripts/render_manifests.py $(ARGS)
