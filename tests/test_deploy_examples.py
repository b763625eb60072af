"""The training-job examples users copy: deploy/kubernetes/*.yaml and deploy/slurm/.

Each is validated by the program that owns its format (kubeconform against the Kubernetes API and
the Kubeflow CRD; shellcheck; ``otelcol validate``), and its traintel configuration is exercised:
a real torchrun runs tests/dist_train.py with exactly the environment the manifest gives the
container, as the kubelet builds it (``$(VAR)`` expansion, downward-API values) plus what the Job
controller or the training operator adds, and we check what traintel derived from it: ranks,
world size, one run id, and the resource attributes on the OTLP that reaches the collector and
Prometheus. No cluster runs here, so the downward-API values are simulated; the deviations from
the manifests are listed in ``LOCAL``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy_tools import REPO, kubeconform, run, tool
from stack_fixture import eventually, promql
from test_distributed import LAUNCHER_IDS, free_port, rank_records
from traintel.stack import install

EXAMPLES = REPO / "deploy/kubernetes"
SLURM = REPO / "deploy/slurm"
SCRIPT = REPO / "tests/dist_train.py"
#: what a run of the examples here changes, and why: one process per node (2 cores, no GPUs),
#: loopback instead of cluster DNS, free ports, this checkout's script and the test's collector
LOCAL = "1 process per node, 127.0.0.1, free ports, tests/dist_train.py, the test stack's OTLP"


def manifests(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


# --- validation -------------------------------------------------------------------------------


def test_kubernetes_examples_validate_against_the_api_and_the_kubeflow_crd() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    result = kubeconform(files)
    summary = json.loads(result.stdout)["summary"]
    assert result.returncode == 0 and summary["invalid"] == summary["errors"] == 0, result.stdout
    assert summary["skipped"] == 0
    assert summary["valid"] == sum(len(manifests(f.name)) for f in files)


def test_examples_send_to_the_agent_service_the_chart_creates() -> None:
    """The OTLP endpoint in the examples is the Service the operator makes for the chart's agent
    (release traintel in observability: CR traintel-agent -> Service traintel-agent-collector)."""
    for name in ("torchrun-indexed-job.yaml", "pytorchjob.yaml"):
        for container in _containers(manifests(name)):
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
                "http://traintel-agent-collector.observability.svc:4318"
            )


def test_sbatch_script_passes_shellcheck() -> None:
    result = run(
        tool("shellcheck"),
        "--shell=bash",
        "--severity=style",
        str(SLURM / "train.sbatch"),
        check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("config", ["otelcol-node.yaml", "otelcol-login-relay.yaml"])
def test_slurm_collector_configs_validate(config: str) -> None:
    otelcol = install.binary("otelcol")
    if otelcol is None:
        pytest.skip(install.missing_reason("otelcol") or "the collector is not installed")
    result = subprocess.run(
        [str(otelcol), "validate", "--config", str(SLURM / config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "TRAINTEL_GATEWAY": "gateway.site:4317",
            "TRAINTEL_RELAY_LISTEN": "10.1.0.5:14317",
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "deprecated" not in output.lower(), output


# --- the kubelet's view -----------------------------------------------------------------------


def _containers(docs: list[dict]) -> list[dict]:
    found = []
    for doc in docs:
        if doc["kind"] == "Job":
            found += doc["spec"]["template"]["spec"]["containers"]
        elif doc["kind"] == "PyTorchJob":
            for replica in doc["spec"]["pytorchReplicaSpecs"].values():
                found += replica["template"]["spec"]["containers"]
    return found


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ is a literal $, anything
    else is left as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def container_env(container: dict, fields: dict[str, str], added: list[dict]) -> dict[str, str]:
    """The environment the kubelet gives ``container``: its env list, then what a controller
    appended (``added``), in order, each value expanded with the variables before it;
    ``fields`` answers the downward API's fieldRefs."""
    env: dict[str, str] = {}
    for var in [*container.get("env", []), *added]:
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def pod_fields(name: str, namespace: str, node: str, labels: dict[str, str]) -> dict[str, str]:
    fields = {
        "metadata.name": name,
        "metadata.namespace": namespace,
        "spec.nodeName": node,
        "metadata.uid": str(uuid.uuid4()),
    }
    fields.update({f"metadata.labels['{k}']": v for k, v in labels.items()})
    return fields


def launch(
    pods: list[tuple[list[str], dict[str, str]]], tmp_path: Path, stack
) -> list[subprocess.CompletedProcess]:
    """Start every pod's command at once (they rendezvous with each other) and wait for all."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_IDS and not k.startswith(("OTEL_", "TRAINTEL_"))
    }
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    procs = []
    for i, (argv, env) in enumerate(pods):
        env = {
            **base,
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "TRAINTEL_DIR": str(tmp_path / "runs"),
        }
        log = (tmp_path / f"pod-{i}.log").open("w")
        procs.append(
            (
                subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT),
                tmp_path / f"pod-{i}.log",
            )
        )
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        results.append(
            subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text()[-4000:], "")
        )
    return results


def torchrun_argv(container: dict, env: dict[str, str], script_args: list[str]) -> list[str]:
    """The container's command and args, expanded as the kubelet does, with the image's script
    path replaced by tests/dist_train.py."""
    command = [expand(part, env) for part in container["command"] + container.get("args", [])]
    assert command[0] == "torchrun"
    scripts = [i for i, part in enumerate(command) if part.endswith("train.py")]
    assert len(scripts) == 1, command
    command[scripts[0]] = str(SCRIPT)
    return [shutil.which("torchrun") or "torchrun", *command[1:], *script_args]


def resource_attributes(stack, run_id: str) -> dict[str, dict[str, str]]:
    """service.instance.id -> resource attributes, from what the collector received."""
    found: dict[str, dict[str, str]] = {}
    tap = stack.tap_file("metrics")
    if not tap.exists():
        return found
    for line in tap.read_text().splitlines():
        for resource in json.loads(line).get("resourceMetrics", []):
            attributes = {
                a["key"]: next(iter(a["value"].values()))
                for a in resource["resource"].get("attributes", [])
            }
            if str(attributes.get("service.instance.id", "")).startswith(f"{run_id}/"):
                found[attributes["service.instance.id"]] = attributes
    return found


def check_run(tmp_path: Path, stack, results, run_id: str, world: int) -> dict[str, dict[str, str]]:
    """Ranks 0..world-1 each recorded under ``run_id``; their resource attributes reached the
    collector and Prometheus's target_info. Returns the attributes per rank."""
    for result in results:
        assert result.returncode == 0, result.stdout
    records = rank_records(tmp_path)
    assert sorted(records) == list(range(world))
    for rank, (directory, lines) in records.items():
        assert directory == run_id
        (start,) = [line for line in lines if line["type"] == "run_start"]
        assert (start["run"], start["rank"], start["world_size"]) == (run_id, rank, world)
    attributes = eventually(
        lambda: (lambda found: found if len(found) == world else None)(
            resource_attributes(stack, run_id)
        ),
        60,
        what=f"resource attributes of {world} ranks",
    )

    def target_info() -> list[dict] | None:
        found = [
            s
            for s in promql(stack, 'target_info{job="traintel"}')
            if s["metric"]["instance"].startswith(f"{run_id}/")
        ]
        return found if len(found) == world else None

    info = eventually(target_info, 60, what="target_info of every rank")
    for series in info:
        labels = series["metric"]
        attrs = attributes[labels["instance"]]
        for key, value in attrs.items():
            if key.startswith(("k8s.", "slurm.")):
                assert labels[key.replace(".", "_")] == value
    return {instance.split("/")[1]: attrs for instance, attrs in attributes.items()}


# --- Kubernetes Indexed Job ---------------------------------------------------------------------


@pytest.mark.stack
@pytest.mark.slow
def test_indexed_job_environment_gives_ranks_one_run_id_and_pod_attributes(
    stack, tmp_path: Path
) -> None:
    docs = manifests("torchrun-indexed-job.yaml")
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    container = json.loads(json.dumps(container))
    local = {"NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1"}  # see LOCAL
    for var in container["env"]:
        var["value"] = local.get(var["name"], var.get("value"))
        if var["value"] is None:
            del var["value"]
    port = str(free_port())
    container["args"] = [
        a.replace("--master-port=29500", f"--master-port={port}") for a in container["args"]
    ]
    job_uid = str(uuid.uuid4())
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    nodes = int(job["spec"]["completions"])
    pods, expected = [], []
    for index in range(nodes):
        labels = {
            "batch.kubernetes.io/job-name": name,
            "batch.kubernetes.io/controller-uid": job_uid,
            "batch.kubernetes.io/job-completion-index": str(index),
        }
        fields = pod_fields(f"{name}-{index}-x7k2p", namespace, f"gpu-node-{index}", labels)
        # The Job controller appends JOB_COMPLETION_INDEX (pkg/controller/job in Kubernetes 1.36).
        added = [
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']"
                    }
                },
            }
        ]
        env = container_env(container, fields, added)
        pods.append((torchrun_argv(container, env, ["--steps", "5", "--sync"]), env))
        expected.append(fields)
    results = launch(pods, tmp_path, stack)
    attributes = check_run(tmp_path, stack, results, f"{name}-{job_uid}", nodes)
    for rank, fields in enumerate(expected):  # one process per node: rank = node index
        attrs = attributes[str(rank)]
        assert attrs["k8s.pod.name"] == fields["metadata.name"]
        assert attrs["k8s.pod.uid"] == fields["metadata.uid"]
        assert attrs["k8s.node.name"] == fields["spec.nodeName"]
        assert attrs["k8s.namespace.name"] == namespace
        assert attrs["k8s.job.name"] == name
        assert attrs["rank"] == str(rank) and attrs["run"] == f"{name}-{job_uid}"


# --- Kubeflow PyTorchJob ------------------------------------------------------------------------


def operator_env(job: dict, replica_type: str, index: int, container: dict) -> list[dict]:
    """What the training operator v1.9.2 appends to the container's env (pkg/controller.v1/
    pytorch/envvar.go and master.go): PYTHONUNBUFFERED, the master's address and port, world size,
    the pod's rank, and PET_* for torchrun."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    replicas = sum(int(s["replicas"]) for s in specs.values())
    nproc = job["spec"].get("nprocPerNode")
    world = replicas * (int(nproc) if nproc and nproc.isdigit() else 1)
    master = specs["Master"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in master["ports"] if p["name"] == "pytorchjob-port")
    address = f"{job['metadata']['name']}-master-0"
    rank = index + (1 if replica_type == "worker" else 0)
    added = [
        ("PYTHONUNBUFFERED", "1"),
        ("MASTER_PORT", port),
        ("PET_MASTER_PORT", port),
        ("MASTER_ADDR", address),
        ("PET_MASTER_ADDR", address),
        ("WORLD_SIZE", world),
        ("RANK", rank),
        ("PET_NODE_RANK", rank),
    ]
    if nproc is not None:
        added.append(("PET_NPROC_PER_NODE", nproc))
    added.append(("PET_NNODES", replicas))
    return [{"name": k, "value": str(v)} for k, v in added]


@pytest.mark.stack
@pytest.mark.slow
def test_pytorchjob_environment_gives_ranks_one_run_id_and_pod_attributes(
    stack, tmp_path: Path
) -> None:
    (job,) = manifests("pytorchjob.yaml")
    job = json.loads(json.dumps(job))
    job["spec"]["nprocPerNode"] = "1"  # see LOCAL
    port = free_port()
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        for p in spec["template"]["spec"]["containers"][0]["ports"]:
            p["containerPort"] = port
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    pods, expected = [], []
    for replica_type, spec in job["spec"]["pytorchReplicaSpecs"].items():
        (container,) = spec["template"]["spec"]["containers"]
        for index in range(int(spec["replicas"])):
            kind = replica_type.lower()
            labels = {
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": kind,
                "training.kubeflow.org/replica-index": str(index),
            }
            fields = pod_fields(f"{name}-{kind}-{index}", namespace, f"gpu-node-{kind}", labels)
            added = [
                {**v, "value": "127.0.0.1"} if v["name"].endswith("MASTER_ADDR") else v
                for v in operator_env(job, kind, index, container)
            ]
            env = container_env(container, fields, added)
            pods.append((torchrun_argv(container, env, ["--steps", "5", "--sync"]), env))
            expected.append(fields)
    assert [env["RANK"] for _, env in pods] == ["0", "1"]
    results = launch(pods, tmp_path, stack)
    attributes = check_run(tmp_path, stack, results, name, len(pods))
    for rank, fields in enumerate(expected):
        attrs = attributes[str(rank)]
        assert attrs["k8s.pod.name"] == fields["metadata.name"]
        assert attrs["k8s.node.name"] == fields["spec.nodeName"]
        assert attrs["kubeflow.replica_type"] == ("master" if rank == 0 else "worker")


# --- SLURM --------------------------------------------------------------------------------------

#: Stand-ins for SLURM's client commands (the tests start no slurmctld/slurmd/munge, and one
#: machine is one node): srun starts its command once per node of the step, here, with the
#: variables SLURM gives a task.
SRUN = r"""#!/bin/bash
nodes=$SLURM_JOB_NUM_NODES
while [[ $1 == -* ]]; do
  case $1 in --nodes=*) nodes=${1#--nodes=} ;; esac
  shift
done
step=$(cat "$SLURM_STEPS" 2>/dev/null || echo 0); echo $((step + 1)) > "$SLURM_STEPS"
pids=()
for ((i = 0; i < nodes; i++)); do
  SLURM_STEP_ID=$step SLURM_PROCID=$i SLURM_NODEID=$i SLURM_LOCALID=0 SLURM_NTASKS=$nodes \
    SLURM_STEP_NUM_NODES=$nodes "$@" & pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { s=$?; [ "$s" -gt 128 ] && wait "$pid"; status=$s; }
done
exit $status
"""
SCONTROL = r"""#!/bin/bash
[ "$1 $2" = "show hostnames" ] && tr ',' '\n' <<< "$3"
"""


def slurm_job(tmp_path: Path, stack, nodes: int, gpus: int, env: dict[str, str]):
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    job_id = str(4_000_000 + os.getpid() % 100_000)
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_IDS and not k.startswith(("OTEL_", "TRAINTEL_"))
    }
    environment = {
        **base,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        # what sbatch sets for the batch script
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_CLUSTER_NAME": "test",
        "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_STEPS": str(tmp_path / "steps"),
        "GPUS_PER_NODE": str(gpus),
        "RDZV_PORT": str(free_port()),
        "TRAINTEL_DIR": str(tmp_path / "runs"),
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **env,
    }
    result = subprocess.run(
        ["bash", str(SLURM / "train.sbatch"), str(SCRIPT), "--steps", "5", "--sync"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return job_id, subprocess.CompletedProcess(
        result.args, result.returncode, (result.stdout + result.stderr)[-4000:], ""
    )


@pytest.mark.stack
@pytest.mark.slow
def test_sbatch_with_a_node_collector_gives_ranks_one_run_id(stack, tmp_path: Path) -> None:
    """One node, two ranks, the per-node collector forwarding to the test stack's collector."""
    otelcol = install.binary("otelcol")
    ports = {name: str(free_port()) for name in ("GRPC", "HTTP", "HEALTH")}
    job_id, result = slurm_job(
        tmp_path,
        stack,
        nodes=1,
        gpus=2,
        env={
            "TRAINTEL_OTELCOL": str(otelcol),
            "TRAINTEL_GATEWAY": stack.endpoints["otlp_grpc"],
            "TRAINTEL_NODE_OTLP_GRPC_PORT": ports["GRPC"],
            "TRAINTEL_NODE_OTLP_HTTP_PORT": ports["HTTP"],
            "TRAINTEL_NODE_HEALTH_PORT": ports["HEALTH"],
        },
    )
    attributes = check_run(tmp_path, stack, [result], f"slurm-{job_id}", 2)
    for attrs in attributes.values():
        assert attrs["slurm.job.id"] == job_id and attrs["slurm.cluster.name"] == "test"


@pytest.mark.stack
@pytest.mark.slow
def test_sbatch_with_a_site_collector_across_two_nodes(stack, tmp_path: Path) -> None:
    """Two nodes of one rank each, rendezvous over c10d, ranks sending to a site collector."""
    job_id, result = slurm_job(
        tmp_path,
        stack,
        nodes=2,
        gpus=1,
        env={
            "TRAINTEL_COLLECTOR": "site",
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.endpoints["otlp_http"],
        },
    )
    check_run(tmp_path, stack, [result], f"slurm-{job_id}", 2)
