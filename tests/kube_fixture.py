"""A real Kubernetes API server for the tests: etcd and kube-apiserver, started natively on
loopback, once per test run (the session fixture ``kube``).

Both are built from their Go modules by traintel's installer (``kube`` in
``traintel.stack.components.DEPLOY_TOOLS``: kube-apiserver v1.36.3 and etcd v3.6.8 through the
wrapper module stack/go/kube) on first use, into ``~/.cache/traintel/bin``. The fixture makes a
throw-away certificate authority and serving certificate (openssl), a service-account key pair and
a static token for a cluster-admin user, and talks to the server over HTTPS with them.

No kubelet, scheduler or controller manager runs: objects are stored, validated (OpenAPI schemas,
CRD structural schemas and CEL rules), defaulted and admitted exactly as a cluster does, and
nothing is ever scheduled. That is what applying a chart checks.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from traintel.stack import install
from traintel.stack.components import DEPLOY_TOOLS

__all__ = ["kube", "Kube", "KubeError"]


class KubeError(Exception):
    """The API server refused a request; ``status`` is its HTTP status, ``body`` its Status."""

    def __init__(self, status: int, body: dict[str, Any], what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body.get('message', body)}")
        self.status = status
        self.body = body


def _free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range, for a program started later:
    until it binds the port, no outgoing connection can take it as its source port, as one from
    the ephemeral range can (a Thanos receiver dialing its peers took the port set aside for the
    next receiver in the hashring, which then failed with 'address already in use')."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port below {low}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str, key: Path, cert: Path) -> None:
    """A throw-away certificate authority named ``name``, valid for two days (openssl)."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        cwd=directory,
    )


def make_certificate(
    directory: Path, name: str, extensions: str, key: Path, cert: Path, ca: Path, ca_key: Path
) -> None:
    """A key and a certificate for ``name`` signed by the CA ``ca``/``ca_key``, valid for two
    days, with these X.509v3 ``extensions`` (lines of an openssl config section)."""
    csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
    ext.write_text("[ext]\n" + extensions)
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-extensions",
        "ext",
        "-out",
        str(cert),
        cwd=directory,
    )


def make_credentials(directory: Path) -> dict[str, Path | str]:
    """A CA, a serving certificate for 127.0.0.1/localhost, a service-account key pair and a
    token file naming one cluster-admin user (group system:masters)."""
    d = directory
    make_ca(d, "traintel-test-ca", d / "ca.key", d / "ca.crt")
    make_certificate(
        d,
        "kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        d / "server.key",
        d / "server.crt",
        d / "ca.crt",
        d / "ca.key",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    token = secrets.token_hex(24)
    (d / "tokens.csv").write_text(f'{token},traintel-test,traintel-test-uid,"system:masters"\n')
    for name in ("ca.key", "server.key", "sa.key", "tokens.csv"):
        (d / name).chmod(0o600)
    return {"token": token, "ca": d / "ca.crt"}


@dataclass
class Kube:
    """A running API server and how to talk to it."""

    url: str
    token: str
    ca: Path
    kubeconfig: Path
    logs: Path
    _context: ssl.SSLContext = field(init=False, repr=False)
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(cafile=str(self.ca))

    # --- plain requests ---------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"message": text.decode(errors="replace")}
            raise KubeError(error.code, parsed, f"{method} {path}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    # --- discovery and server-side apply -----------------------------------------------------
    def resource(self, api_version: str, kind: str) -> tuple[str, str, bool]:
        """(collection path prefix, plural, namespaced) of a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._resources:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            for item in self.get(base)["resources"]:
                if "/" not in item["name"]:
                    self._resources[(api_version, item["kind"])] = (
                        item["name"],
                        bool(item["namespaced"]),
                    )
        if key not in self._resources:
            raise KubeError(
                404, {"message": f"the server has no {kind} in {api_version}"}, "discovery"
            )
        plural, namespaced = self._resources[key]
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        return base, plural, namespaced

    def path(self, obj: dict[str, Any]) -> str:
        base, plural, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        if namespaced:
            return f"{base}/namespaces/{meta.get('namespace') or 'default'}/{plural}/{meta['name']}"
        return f"{base}/{plural}/{meta['name']}"

    def apply(
        self, obj: dict[str, Any], manager: str = "traintel-tests", dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply (``kubectl apply --server-side``): validation, CEL rules, defaulting
        and admission run; returns the object as stored."""
        query = {"fieldManager": manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        result: dict[str, Any] = self.request(
            "PATCH",
            self.path(obj) + "?" + urllib.parse.urlencode(query),
            json.dumps(obj).encode(),
            content_type="application/apply-patch+yaml",
        )
        return result

    def apply_all(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.apply(d) for d in docs]

    def namespace(self, name: str) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def install_crds(self, crds: list[dict[str, Any]]) -> None:
        """Apply CustomResourceDefinitions and wait until the server serves each."""
        for crd in crds:
            self.apply(crd)
        deadline = time.monotonic() + 60
        for crd in crds:
            path = (
                f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
            )
            while True:
                status = self.get(path).get("status", {})
                if any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in status.get("conditions", [])
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {crd['metadata']['name']} not established: {status}")
                time.sleep(0.2)
        self._resources.clear()


def _wait_ready(
    url: str,
    token: str,
    ca: Path,
    procs: list[subprocess.Popen[bytes]],
    logs: Path,
    timeout: float = 180,
) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args[0]} exited {proc.returncode}; see {logs}:\n" + _tail(logs)
                )
        req = urllib.request.Request(url + "/readyz", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=context, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.5)
    raise TimeoutError(
        f"kube-apiserver not ready in {timeout:.0f}s ({last}); see {logs}:\n" + _tail(logs)
    )


def _tail(logs: Path) -> str:
    return "\n".join(
        f"{p.name}: {line}"
        for p in sorted(logs.glob("*.log"))
        for line in p.read_text(errors="replace").splitlines()[-15:]
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def programs() -> dict[str, Path]:
    """kube-apiserver and etcd, built once; skips the test saying why when they cannot be."""
    status = install.install(["kube"], say=lambda _: None, table=DEPLOY_TOOLS)
    found = {b: install.binary("kube", b) for b in DEPLOY_TOOLS["kube"].binaries}
    if not all(found.values()):
        pytest.skip(
            f"kube-apiserver/etcd ({DEPLOY_TOOLS['kube'].version}) could not be built: "
            f"{status.get('kube', {}).get('reason', 'unknown reason')}"
        )
    return {name: path for name, path in found.items() if path}


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """One etcd and one kube-apiserver on loopback for the whole test run."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the API server's certificates")
    binaries = programs()
    root = tmp_path_factory.mktemp("kube")
    creds = make_credentials(root)
    logs = root / "logs"
    logs.mkdir()
    etcd_client, etcd_peer, api_port = _free_port(), _free_port(), _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "etcd.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        str(binaries["etcd"]),
                        "--name",
                        "traintel-test",
                        "--data-dir",
                        str(root / "etcd"),
                        "--listen-client-urls",
                        f"http://127.0.0.1:{etcd_client}",
                        "--advertise-client-urls",
                        f"http://127.0.0.1:{etcd_client}",
                        "--listen-peer-urls",
                        f"http://127.0.0.1:{etcd_peer}",
                        "--initial-advertise-peer-urls",
                        f"http://127.0.0.1:{etcd_peer}",
                        "--initial-cluster",
                        f"traintel-test=http://127.0.0.1:{etcd_peer}",
                        "--listen-metrics-urls",
                        f"http://127.0.0.1:{_free_port()}",
                        # a test's data: no fsync per write (much faster on a busy disk)
                        "--unsafe-no-fsync",
                        "--log-level",
                        "warn",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        with (logs / "kube-apiserver.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        str(binaries["kube-apiserver"]),
                        f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                        "--bind-address=127.0.0.1",
                        "--advertise-address=127.0.0.1",
                        f"--secure-port={api_port}",
                        f"--tls-cert-file={root / 'server.crt'}",
                        f"--tls-private-key-file={root / 'server.key'}",
                        f"--token-auth-file={root / 'tokens.csv'}",
                        "--authorization-mode=RBAC",
                        "--service-account-issuer=https://kubernetes.default.svc",
                        f"--service-account-key-file={root / 'sa.pub'}",
                        f"--service-account-signing-key-file={root / 'sa.key'}",
                        "--service-cluster-ip-range=10.96.0.0/16",
                        # Nothing serves the aggregated APIs or runs controllers here.
                        "--enable-aggregator-routing=false",
                        "--v=1",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"https://127.0.0.1:{api_port}"
        token, ca = str(creds["token"]), Path(creds["ca"])
        _wait_ready(url, token, ca, procs, logs)
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {"server": url, "certificate-authority": str(ca)},
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                }
            )
        )
        kubeconfig.chmod(0o600)
        yield Kube(url=url, token=token, ca=ca, kubeconfig=kubeconfig, logs=logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)
