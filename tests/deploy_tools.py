"""Tools and schemas for checking deploy/ without a cluster.

Helm and kubeconform are built from their Go modules by traintel's installer
(``traintel.stack.components.DEPLOY_TOOLS``), on first use, into ``~/.cache/traintel/bin``.

The schemas every rendered object is validated against come from modules their projects publish,
at pinned versions: the Kubernetes API's OpenAPI v3 documents (``api/openapi-spec/v3`` of the
``k8s.io/kubernetes`` module) and the CRDs of the Prometheus Operator, the OpenTelemetry Operator
and the Kubeflow training operator. They are turned into the standalone, strict JSON schemas that
kubeconform reads, the way kubeconform's own ``openapi2jsonschema`` does for CRDs: objects that
list their properties reject unknown ones (as the API server's pruning and ``kubectl
--validate=strict`` do) unless the schema preserves unknown fields.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS

REPO = Path(__file__).resolve().parents[1]

#: The Kubernetes release whose API the rendered objects must satisfy (current in late 2026; the
#: chart's kubeVersion is >=1.29 and uses nothing newer than 1.29's APIs).
KUBERNETES = ("k8s.io/kubernetes", "v1.36.3")

#: CRDs, by the operator release that publishes them: (module, version, CRD files in it).
CRD_SOURCES = {
    "prometheus-operator": (
        "github.com/prometheus-operator/prometheus-operator",
        "v0.94.1",
        (
            "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
            "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        ),
    ),
    "opentelemetry-operator": (
        "github.com/open-telemetry/opentelemetry-operator",
        "v0.148.0",
        ("config/crd/bases/opentelemetry.io_opentelemetrycollectors.yaml",),
    ),
    "training-operator": (
        "github.com/kubeflow/training-operator",
        "v1.9.2",
        ("manifests/base/crds/kubeflow.org_pytorchjobs.yaml",),
    ),
}


@functools.cache
def tool(name: str) -> str:
    """Path of ``helm`` or ``kubeconform``, built once; skips the test saying why if it cannot be."""
    status = install.install([name], say=lambda _: None, table=DEPLOY_TOOLS)
    found = install.binary(name)
    if found is None:
        pytest.skip(
            f"{name} {DEPLOY_TOOLS[name].version} could not be built: "
            f"{status.get(name, {}).get('reason', 'unknown reason')}"
        )
    return str(found)


def run(*argv: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=cwd)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


#: the Helm chart the repository ships
CHART = REPO / "deploy/helm/traintel"


def helm_template(*args: str, namespace: str = "observability") -> list[dict[str, Any]]:
    """The chart's documents as ``helm template`` renders them for the pinned Kubernetes
    version, with ``args`` (values files, ``--set``)."""
    out = run(
        tool("helm"),
        "template",
        "traintel",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBERNETES[1].lstrip("v"),
        *args,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def chart_collectors(profile: str) -> list[dict[str, Any]]:
    """The OpenTelemetryCollector resources the chart renders with its ``ci/PROFILE-values.yaml``."""
    documents = helm_template("-f", str(CHART / "ci" / f"{profile}-values.yaml"))
    return [d for d in documents if d["kind"] == "OpenTelemetryCollector"]


@functools.cache
def crds() -> tuple[dict, ...]:
    """Every pinned CRD, parsed (read-only: shared between tests)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(
        yaml.load((_module(module, version) / path).read_text(), Loader=loader)
        for module, version, paths in CRD_SOURCES.values()
        for path in paths
    )


def schema_dir() -> Path:
    """kubeconform schemas (``<dir>/<group>/<kind>_<version>.json``, core kinds under ``v1/``) for
    the pinned Kubernetes API and CRDs, generated once into the cache (keyed by the pins and this
    module's code)."""
    key = hashlib.sha256(
        repr((KUBERNETES, CRD_SOURCES)).encode()
        + inspect.getsource(_strict).encode()
        + inspect.getsource(_write_openapi_kinds).encode()
    ).hexdigest()[:12]
    out = install.cache_dir() / "kubeconform-schemas" / key
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(f".tmp-{key}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec_dir = _module(*KUBERNETES) / "api/openapi-spec/v3"
    object_meta: dict[str, Any] = {}
    for path in sorted(spec_dir.glob("api*__v*_openapi.json")):
        schemas = json.loads(path.read_text())["components"]["schemas"]
        _write_openapi_kinds(schemas, tmp)
        object_meta = object_meta or _closure(
            {name: _strict(_refs(schema)) for name, schema in schemas.items()},
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        )
    for crd in crds():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # The API server validates a custom resource's metadata as any object's: so do we.
            schema["properties"]["metadata"] = {
                "$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            }
            schema["definitions"] = object_meta
            _dump(tmp / group / f"{kind.lower()}_{version['name']}.json", schema)
    (tmp / ".complete").touch()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def kubeconform(paths: list[Path]) -> subprocess.CompletedProcess:
    """kubeconform over ``paths`` (files or folders): strict, every kind must have a schema."""
    # kubeconform's .Group is the part of apiVersion before the slash: "v1" for the core group.
    location = (
        str(schema_dir()) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    )
    return run(
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        KUBERNETES[1].lstrip("v"),
        "-schema-location",
        location,
        *map(str, paths),
        check=False,
    )


# --- the conversion -----------------------------------------------------------------------------


def _module(module: str, version: str) -> Path:
    if not shutil.which("go"):
        pytest.skip("`go` is not on PATH: the schemas come from Go modules")
    try:
        return install.module_dir(module, version)
    except install.BuildError as error:
        pytest.skip(str(error))


def _write_openapi_kinds(schemas: dict[str, Any], out: Path) -> None:
    """One file per group/version/kind of an OpenAPI v3 document: the kind's schema with the
    schemas it references (transitively) under ``definitions``."""
    converted = {name: _strict(_refs(schema)) for name, schema in schemas.items()}
    for name, schema in schemas.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if name.startswith("io.k8s.apimachinery.pkg.apis.meta.v1.") and gvk["kind"] in (
                "DeleteOptions",
                "WatchEvent",
            ):
                continue  # listed under every group; not objects that manifests hold
            root = dict(converted[name])
            root["definitions"] = _closure(converted, name)
            group = gvk["group"] or gvk["version"]  # the core group's files live under v1/
            _dump(out / group / f"{gvk['kind'].lower()}_{gvk['version']}.json", root)


def _closure(converted: dict[str, Any], name: str) -> dict[str, Any]:
    """``name`` and every schema it references, transitively."""
    found: dict[str, Any] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in found:
            found[current] = converted[current]
            todo += _referenced(converted[current])
    return found


def _referenced(node: Any) -> list[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        return ([ref.rsplit("/", 1)[1]] if isinstance(ref, str) else []) + [
            r for v in node.values() for r in _referenced(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _referenced(v)]
    return []


def _refs(node: Any) -> Any:
    """OpenAPI's ``#/components/schemas/X`` as ``#/definitions/X``."""
    if isinstance(node, dict):
        return {
            k: (
                v.replace("#/components/schemas/", "#/definitions/")
                if k == "$ref" and isinstance(v, str)
                else _refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_refs(v) for v in node]
    return node


def _strict(node: Any) -> Any:
    """A copy in which objects with listed properties reject unknown ones (unless the schema
    preserves unknown fields), ``nullable`` admits null, and int-or-string admits both."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: _strict(schema) for name, schema in value.items()}
        elif key in ("enum", "default", "example", "required", "x-kubernetes-validations"):
            out[key] = value
        else:
            out[key] = _strict(value)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _dump(path: Path, schema: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, separators=(",", ":")))
