"""Run the stack natively on one host: the stack's own configs, adapted, on 127.0.0.1.

There is no Docker here, so ``traintel stack up`` and the test fixture start the programs built
by ``traintel stack install`` directly. The configs are the ones docker-compose.yml mounts, with
small rewrites instead of copies, so the tests check what compose runs:

- ``host:port`` strings naming a compose service (``prometheus:9090``) or a bind-all/loopback
  address become ``127.0.0.1:<port>`` from the port map (distinct ports per program, free
  ports in tests); ``*port*`` integers and ``*address*``/``host`` strings likewise;
- container paths (``/etc/prometheus/...``, ``/loki``) become config or run-directory paths,
  from the compose file's volume mounts where it exists;
- a few settings that only matter when everything shares one host (collector self-metrics
  port, Loki's ring in memory, Prometheus/Alertmanager listen flags).

Each program logs to ``<run dir>/<name>/<name>.log``; its pid goes to ``<name>.pid`` and
``down`` stops only the pids it started (checked against the binary before signalling).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from traintel.core import env as environment
from traintel.stack import install, project
from traintel.stack.components import COMPONENTS, OTELCOL_VERSION, Component

#: The test bed's stand-in for Loki and Tempo (stack/sink/collector.yaml): a second
#: traintel-otelcol listening where their OTLP endpoints are, writing what it receives to files.
#: Not a program of the stack (never in compose, never installed on its own); only a
#: ``NativeStack(sink=True)`` starts it, for whichever of Loki and Tempo has no binary.
SINK = Component(
    name="sink",
    version=OTELCOL_VERSION,
    method="none",
    binaries=("traintel-otelcol",),
    image="",
    ports={"health": 13134},
    ready=("health", "/"),
    required=False,
)
#: every program a NativeStack can run, by name
PROGRAMS: dict[str, Component] = {**COMPONENTS, SINK.name: SINK}
#: what the sink stands in for, and the signal it receives for each
SINK_SIGNALS = {"loki": "logs", "tempo": "traces"}

#: the order programs start in (exporters' targets first); ``down`` goes in reverse. Loki, Tempo
#: and Grafana run when the user supplies their binaries (components.py says how); they keep
#: their ports either way, so that configs naming them still render.
ORDER = ("loki", "tempo", "sink", "prometheus", "alertmanager", "otelcol", "grafana")

#: config file of each program relative to the stack's files (first that exists)
CONFIGS: dict[str, tuple[str, ...]] = {
    "otelcol": ("otel-collector/config.yaml",),
    "prometheus": ("prometheus/prometheus.yml",),
    "alertmanager": ("alertmanager/alertmanager.yml",),
    "loki": ("loki/loki.yaml", "loki/config.yaml", "loki/local-config.yaml"),
    "tempo": ("tempo/tempo.yaml",),
    "sink": ("stack/sink/collector.yaml",),
    # Grafana has no config file of ours: it is configured by its provisioning files (the data
    # sources rendered here, the dashboards provider next to them) and GF_* variables.
    "grafana": ("grafana/provisioning/datasources/datasources.yaml",),
}

#: container paths of the official images, used where docker-compose.yml does not say
#: (value: ("repo", path) for config mounts, ("data", "") for data volumes)
DEFAULT_MOUNTS: dict[str, dict[str, tuple[str, str]]] = {
    "otelcol": {
        "/etc/otelcol-contrib": ("repo", "otel-collector"),
        "/etc/otelcol": ("repo", "otel-collector"),
        "/var/lib/otelcol": ("data", ""),
    },
    "prometheus": {"/etc/prometheus": ("repo", "prometheus"), "/prometheus": ("data", "")},
    "alertmanager": {
        "/etc/alertmanager": ("repo", "alertmanager"),
        "/alertmanager": ("data", ""),
    },
    "loki": {"/etc/loki": ("repo", "loki"), "/loki": ("data", ""), "/tmp/loki": ("data", "")},
    "tempo": {"/etc/tempo": ("repo", "tempo"), "/var/tempo": ("data", "")},
    "sink": {"/var/lib/otelcol-sink": ("data", "")},
    "grafana": {"/var/lib/grafana": ("data", "")},
}

LOCAL_HOSTS = {"", "0.0.0.0", "localhost", "127.0.0.1", "::", "[::]"}
ADDRESS = re.compile(
    r"(?:^|(?<=[/\s\"'@,=\[(]))(?P<host>[A-Za-z0-9_.-]*|\[::\]):(?P<port>\d{2,5})(?=$|[/\s\"',\])?#])"
)


class StackError(Exception):
    """Something the user must fix (missing config or binary, a program that would not start)."""


def default_ports() -> dict[str, dict[str, int]]:
    """Compose's ports, except that a port already taken by an earlier program moves up by
    10000 (Tempo's OTLP 4317 -> 14317), since everything shares one host natively."""
    taken: set[int] = set()
    ports: dict[str, dict[str, int]] = {}
    for name in PROGRAMS:  # the collector first: its OTLP ports are the ones users know
        ports[name] = {}
        for port_name, port in PROGRAMS[name].ports.items():
            while port in taken:
                port += 10000
            taken.add(port)
            ports[name][port_name] = port
    return ports


def free_port() -> int:
    """A loopback port free now (the kernel's choice): for one program started beside the stack."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports() -> dict[str, dict[str, int]]:
    """A free loopback port for every program's every port (tests: no clash with a user's stack)."""
    sockets = []
    ports: dict[str, dict[str, int]] = {}
    for name in PROGRAMS:
        ports[name] = {}
        for port_name in PROGRAMS[name].ports:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports[name][port_name] = s.getsockname()[1]
    for s in sockets:
        s.close()
    return ports


def default_run_dir() -> Path:
    return Path(environment.TRAINTEL_STACK_DIR.get() or install.cache_dir() / "stack")


@dataclass
class NativeStack:
    run_dir: Path
    ports: dict[str, dict[str, int]] = field(default_factory=default_ports)
    #: also write everything the collector receives to <run dir>/otelcol/tap-*.json
    tap: bool = False
    #: start the sink (a second collector) where Loki and Tempo would listen, for whichever of
    #: them has no binary: what the collector sends them lands in :meth:`sink_file`
    sink: bool = False
    #: program -> why it is not running (binary or config missing)
    unavailable: dict[str, str] = field(default_factory=dict)
    #: the stack's files: the installed traintel's (default), or a ``traintel stack init``
    #: directory whose configs an operator edited
    configs: Path = field(default_factory=project.root)
    #: the processes this object started, reaped on stop (no zombies in a long test session)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.configs = Path(self.configs).resolve()

    # -- endpoints ------------------------------------------------------------------------

    def url(self, name: str, port: str | None = None) -> str:
        port = port or (PROGRAMS[name].ready or ("", ""))[0] or next(iter(self.ports[name]))
        return f"http://127.0.0.1:{self.ports[name][port]}"

    @property
    def endpoints(self) -> dict[str, str]:
        return {
            "otlp_http": self.url("otelcol", "otlp_http"),
            "otlp_grpc": f"127.0.0.1:{self.ports['otelcol']['otlp_grpc']}",
            "collector_health": self.url("otelcol", "health"),
            "collector_metrics": self.url("otelcol", "metrics"),
            "collector_prometheus_exporter": self.url("otelcol", "prom_exporter"),
            "prometheus": self.url("prometheus", "web"),
            "alertmanager": self.url("alertmanager", "web"),
            "loki": self.url("loki", "http"),
            "tempo": self.url("tempo", "http"),
            "tempo_otlp_grpc": f"127.0.0.1:{self.ports['tempo']['otlp_grpc']}",
            "grafana": self.url("grafana", "http"),
        }

    @property
    def prometheus_ui(self) -> bool:
        """Whether Prometheus serves its web UI here (``stack install`` built it from its
        sources). Alertmanager never does natively: its UI is Elm, and Elm's packages come only
        from package.elm-lang.org and GitHub, out of reach here (the compiler is on npm)."""
        return (install.prometheus_ui_dir() / "mantine-ui" / "index.html").is_file()

    def tap_file(self, signal_name: str) -> Path:
        """Where the tap writes ``traces``, ``metrics`` or ``logs`` (OTLP JSON lines)."""
        return self.run_dir / "otelcol" / f"tap-{signal_name}.json"

    def sink_file(self, signal_name: str) -> Path:
        """Where the sink writes what reached "Loki" (``logs``) or "Tempo" (``traces``)."""
        return self.run_dir / "sink" / "data" / f"{signal_name}.json"

    @property
    def sink_covers(self) -> tuple[str, ...]:
        """The programs the sink stands in for: those of Loki and Tempo without a binary."""
        if not self.sink:
            return ()
        return tuple(name for name in SINK_SIGNALS if install.missing_reason(name))

    # -- lifecycle ------------------------------------------------------------------------

    def up(
        self,
        names: tuple[str, ...] = ORDER,
        timeout: float = 90.0,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        """Start every available program (skipping running ones) and wait until each is ready.

        Raises StackError when a required program is unavailable or does not get ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._save_state()
        for name in ORDER:
            if name not in names or (name == SINK.name and not self.sink_covers):
                continue
            reason = self._why_unavailable(name)
            if reason:
                self.unavailable[name] = reason
                if PROGRAMS[name].required:
                    raise StackError(reason)
                say(f"{name}: skipped ({reason})")
                continue
            self.start(name, timeout=timeout)
            if name == SINK.name:
                say(
                    f"{name}: standing in for {' and '.join(self.sink_covers)} "
                    f"(files in {self.sink_file('logs').parent})"
                )
            else:
                say(f"{name}: ready at {self.url(name)}")
        self._save_state()

    def down(self) -> None:
        for name in reversed(ORDER):
            self.stop(name)

    def start(self, name: str, timeout: float = 90.0) -> None:
        """Render the config, start the program and wait for its readiness endpoint."""
        if self.pid(name):
            return
        busy = [
            f"{port_name} {port}" for port_name, port in self.ports[name].items() if _in_use(port)
        ]
        if busy:
            raise StackError(
                f"{name}: port {', '.join(busy)} on 127.0.0.1 is in use (another "
                "stack running? stop it, or use another --run-dir with other ports)"
            )
        argv, env, _ = self.render(name)
        work = self.run_dir / name
        log = work / f"{name}.log"
        with log.open("a") as out:
            proc = subprocess.Popen(
                argv,
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**environment.snapshot(), **env},
                start_new_session=True,
            )
        self._procs[name] = proc
        (work / f"{name}.pid").write_text(f"{proc.pid}\n{argv[0]}\n")
        self._wait_ready(name, proc, log, timeout)

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop the program if this run directory started it (SIGTERM, then SIGKILL)."""
        pid = self.pid(name)
        pid_file = self.run_dir / name / f"{name}.pid"
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if name in self._procs:
            self._procs.pop(name).wait()
        pid_file.unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        """The running pid from the pid file, if it still is the binary we started."""
        try:
            pid_text, exe = (self.run_dir / name / f"{name}.pid").read_text().split("\n")[:2]
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, ValueError):
            return None
        return pid if cmdline == exe and _alive(pid) else None

    def ready(self, name: str) -> bool:
        spec = PROGRAMS[name].ready
        if not spec:
            return self.pid(name) is not None
        return _http_ok(f"{self.url(name, spec[0])}{spec[1]}")

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "pid": self.pid(name),
                "ready": bool(self.pid(name)) and self.ready(name),
                "url": self.url(name),
                "log": str(self.run_dir / name / f"{name}.log"),
            }
            for name in ORDER
            if name != SINK.name or self.pid(name)
        }

    @classmethod
    def load(cls, run_dir: Path) -> NativeStack:
        """The stack a previous ``up`` started in ``run_dir`` (its ports come from stack.json)."""
        state = json.loads((Path(run_dir) / "stack.json").read_text())
        ports = {**default_ports(), **state["ports"]}  # a stack.json of an older version
        return cls(
            run_dir=run_dir,
            ports=ports,
            tap=state.get("tap", False),
            sink=state.get("sink", False),
            configs=Path(state.get("configs") or project.root()),
        )

    # -- internals ------------------------------------------------------------------------

    def _save_state(self) -> None:
        state = {
            "ports": self.ports,
            "tap": self.tap,
            "sink": self.sink,
            "endpoints": self.endpoints,
            "unavailable": self.unavailable,
            "configs": str(self.configs),
            "ui": {"prometheus": self.prometheus_ui, "alertmanager": False},
        }
        (self.run_dir / "stack.json").write_text(json.dumps(state, indent=2))

    def _why_unavailable(self, name: str) -> str | None:
        reason = install.missing_reason("otelcol" if name == SINK.name else name)
        if reason:
            return reason
        if not self._config_path(name):
            return f"config not yet written: {' or '.join(CONFIGS[name])}"
        if name == "grafana" and not environment.GRAFANA_ADMIN_PASSWORD.get():
            return (
                "grafana: set GRAFANA_ADMIN_PASSWORD (and optionally GRAFANA_ADMIN_USER), as "
                "in .env for compose: traintel never starts Grafana with a default password"
            )
        return None

    def _wait_ready(
        self, name: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode} on start:\n{_tail(log)}")
            if self.ready(name):
                return
            time.sleep(0.25)
        raise StackError(f"{name} not ready after {timeout:.0f}s (log {log}):\n{_tail(log)}")

    def render(
        self, name: str, source: Path | None = None
    ) -> tuple[list[str], dict[str, str], Path]:
        """Write ``<run dir>/<name>/rendered-<file>`` from the program's config (or ``source``);
        return the command line, the environment and the rendered file."""
        source = source or self._config_path(name)
        if source is None:
            raise StackError(f"config not yet written: {' or '.join(CONFIGS[name])}")
        work = self.run_dir / name
        (work / "data").mkdir(parents=True, exist_ok=True)
        compose = self._compose_service(name)
        mounts = self._mounts(name, compose)
        config = self._rewrite(yaml.safe_load(source.read_text()) or {}, name, mounts)
        env = {
            k: self._rewrite(_interpolate(v), name, mounts)
            for k, v in _compose_env(compose).items()
        }
        out = work / f"rendered-{source.name}"
        adapters = {
            "otelcol": self._adapt_otelcol,
            "prometheus": self._adapt_prometheus,
            "alertmanager": self._adapt_alertmanager,
            "loki": self._adapt_loki,
            "sink": self._adapt_sink,
            "tempo": self._adapt_tempo,
            "grafana": self._adapt_grafana,
        }
        adapted = adapters[name](config, source, out)
        argv, more_env = adapted if isinstance(adapted, tuple) else (adapted, {})
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        return argv, {**env, **more_env}, out

    def _adapt_otelcol(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        ports = self.ports["otelcol"]
        for rid, receiver in (config.get("receivers") or {}).items():
            if rid.split("/")[0] == "otlp":
                protocols = receiver.setdefault("protocols", {})
                for proto in ("grpc", "http"):
                    if proto in protocols:
                        protocols[proto] = protocols[proto] or {}
                        protocols[proto]["endpoint"] = f"127.0.0.1:{ports['otlp_' + proto]}"
        for eid, ext in (config.get("extensions") or {}).items():
            kind = eid.split("/")[0]
            if kind == "health_check":
                config["extensions"][eid] = {
                    **(ext or {}),
                    "endpoint": f"127.0.0.1:{ports['health']}",
                }
            elif kind == "file_storage":
                directory = out.parent / "data" / eid.replace("/", "_")
                directory.mkdir(exist_ok=True)
                config["extensions"][eid] = {**(ext or {}), "directory": str(directory)}
        for xid, exporter in (config.get("exporters") or {}).items():
            if xid.split("/")[0] == "file" and exporter and "path" in exporter:
                exporter["path"] = str(out.parent / "data" / Path(exporter["path"]).name)
        telemetry = config.setdefault("service", {}).setdefault("telemetry", {})
        metrics = telemetry.get("metrics") or {}
        metrics.pop("address", None)
        metrics["readers"] = [
            {"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": ports["metrics"]}}}}
        ]
        telemetry["metrics"] = metrics
        if self.tap:
            self._add_tap(config)
        return [str(install.binary("otelcol")), "--config", str(out)]

    def _add_tap(self, config: dict[str, Any]) -> None:
        """A file exporter on every pipeline: tests read what the collector received."""
        exporters = config.setdefault("exporters", {})
        for pid, pipeline in (config.get("service", {}).get("pipelines") or {}).items():
            signal_name = pid.split("/")[0]
            if signal_name not in ("traces", "metrics", "logs"):
                continue
            tap = f"file/traintel_tap_{signal_name}"
            exporters[tap] = {"path": str(self.tap_file(signal_name)), "flush_interval": "100ms"}
            pipeline.setdefault("exporters", [])
            if tap not in pipeline["exporters"]:
                pipeline["exporters"].append(tap)

    def _adapt_prometheus(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        config["rule_files"] = [_absolute(p, source) for p in config.get("rule_files") or []]
        # Scraping a program that cannot run here (Tempo, Grafana) would fire StackComponentDown
        # for the whole session, and that alert inhibits others: scrape only what can run.
        absent = {
            f"127.0.0.1:{port}"
            for name in COMPONENTS
            if install.missing_reason(name)
            for port in self.ports[name].values()
        }
        jobs = []
        for job in config.get("scrape_configs") or []:
            for static in job.get("static_configs") or []:
                static["targets"] = [t for t in static.get("targets") or [] if t not in absent]
            if not job.get("static_configs") or any(s["targets"] for s in job["static_configs"]):
                jobs.append(job)
        config["scrape_configs"] = jobs
        if config.get("scrape_config_files"):
            config["scrape_config_files"] = [
                _absolute(p, source) for p in config["scrape_config_files"]
            ]
        argv = [
            str(install.binary("prometheus")),
            f"--config.file={out}",
            f"--storage.tsdb.path={out.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['prometheus']['web']}",
            "--web.enable-remote-write-receiver",
            "--web.enable-lifecycle",
            "--enable-feature=exemplar-storage",
            # How much the TSDB keeps, exactly as compose says (time and size).
            *(
                flag
                for flag in self._compose_service("prometheus").get("command") or []
                if str(flag).startswith("--storage.tsdb.retention.")
            ),
        ]
        if not install.load_status().get("prometheus", {}).get("version", "").startswith("2."):
            argv.append("--web.enable-otlp-receiver")
        # Its web UI, when `stack install` built it: read from ./web/ui/static of the working
        # directory (this one) by a Prometheus built without embedded assets
        link = out.parent / "web" / "ui" / "static"
        if self.prometheus_ui and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(install.prometheus_ui_dir(), target_is_directory=True)
        return argv

    def _adapt_alertmanager(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        if config.get("templates"):
            config["templates"] = [_absolute(p, source) for p in config["templates"]]
        self._write_secrets(config, out.parent / "secrets")
        return [
            str(install.binary("alertmanager")),
            f"--config.file={out}",
            f"--storage.path={out.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']['web']}",
            "--cluster.listen-address=",  # no gossip port: a single native instance
        ]

    def _write_secrets(self, value: Any, directory: Path) -> Any:
        """As compose's secrets from .env (``stack init --slack-webhook``...): every
        ``*_file: /run/secrets/NAME`` of the config reads a private file holding the variable
        ``NAME`` upper-cased, from this environment or the project's .env."""
        if isinstance(value, list):
            return [self._write_secrets(item, directory) for item in value]
        if not isinstance(value, dict):
            return value
        for key, item in value.items():
            if (
                isinstance(item, str)
                and str(key).endswith("_file")
                and item.startswith(project.SECRETS_DIR + "/")
            ):
                name = item.rsplit("/", 1)[1]
                variable = name.upper()
                secret = environment.snapshot().get(variable) or project.read_env(
                    self.configs / ".env"
                ).get(variable)
                if not secret:
                    raise StackError(
                        f"alertmanager: {key} names the secret {name}: set "
                        f"{variable} in {self.configs / '.env'} (as `traintel stack "
                        "init` does) or in the environment"
                    )
                directory.mkdir(mode=0o700, exist_ok=True)
                path = directory / name
                path.unlink(missing_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    out.write(secret)
                value[key] = str(path)
            else:
                self._write_secrets(item, directory)
        return value

    def _adapt_loki(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        self._serve_on_loopback(config, "loki")
        common = config.setdefault("common", {})
        common["instance_addr"] = "127.0.0.1"
        common.setdefault("ring", {})["kvstore"] = {"store": "inmemory"}
        common["ring"]["instance_addr"] = "127.0.0.1"
        config.pop("memberlist", None)
        config.setdefault("analytics", {})["reporting_enabled"] = False
        # A lone ingester has no ring peers to settle with: ready after 1s instead of 15s.
        lifecycler = config.setdefault("ingester", {}).setdefault("lifecycler", {})
        lifecycler.setdefault("min_ready_duration", "1s")
        return [str(install.binary("loki")), f"-config.file={out}", "-target=all"]

    def _serve_on_loopback(self, config: dict[str, Any], name: str) -> None:
        """Loki's and Tempo's ``server`` block (dskit's): HTTP and gRPC on our loopback ports."""
        ports = self.ports[name]
        config.setdefault("server", {}).update(
            http_listen_address="127.0.0.1",
            http_listen_port=ports["http"],
            grpc_listen_address="127.0.0.1",
            grpc_listen_port=ports["grpc"],
        )

    def _adapt_sink(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        """Keep the receivers of the programs the sink stands in for; files in the run dir."""
        for program, signal_name in SINK_SIGNALS.items():
            if program not in self.sink_covers:
                config.get("receivers", {}).pop(f"otlp/{program}", None)
                config.get("exporters", {}).pop(f"file/{signal_name}", None)
                config.get("service", {}).get("pipelines", {}).pop(signal_name, None)
        for signal_name in SINK_SIGNALS.values():
            exporter = config.get("exporters", {}).get(f"file/{signal_name}")
            if exporter:
                exporter["path"] = str(self.sink_file(signal_name))
        return [str(install.binary("otelcol")), "--config", str(out)]

    def _adapt_tempo(self, config: dict[str, Any], source: Path, out: Path) -> list[str]:
        """A user-supplied Tempo (traintel cannot run one itself: untested here)."""
        self._serve_on_loopback(config, "tempo")
        config.setdefault("usage_report", {})["reporting_enabled"] = False
        return [str(install.binary("tempo")), f"-config.file={out}", "-target=all"]

    def _adapt_grafana(
        self, config: dict[str, Any], source: Path, out: Path
    ) -> tuple[list[str], dict[str, str]]:
        """A user-supplied Grafana (untested here), provisioned like compose's: the rendered
        data sources, the dashboards provider pointing at grafana/dashboards, GF_* paths."""
        work = out.parent
        provisioning = work / "provisioning"
        mounts = self._mounts("grafana", self._compose_service("grafana"))
        for kind, data in (
            ("datasources", config),
            (
                "dashboards",
                self._rewrite(
                    yaml.safe_load(
                        (
                            self.configs / "grafana/provisioning/dashboards/dashboards.yaml"
                        ).read_text()
                    ),
                    "grafana",
                    mounts,
                ),
            ),
        ):
            (provisioning / kind).mkdir(parents=True, exist_ok=True)
            (provisioning / kind / f"{kind}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        grafana = install.binary("grafana")
        home = grafana.parent.parent if grafana else work
        env = {
            "GF_PATHS_PROVISIONING": str(provisioning),
            "GF_PATHS_DATA": str(work / "data"),
            "GF_PATHS_LOGS": str(work / "data" / "log"),
            "GF_PATHS_PLUGINS": str(work / "data" / "plugins"),
            "GF_SERVER_HTTP_ADDR": "127.0.0.1",
            "GF_SERVER_HTTP_PORT": str(self.ports["grafana"]["http"]),
        }
        return [str(grafana), "server", f"--homepath={home}"], env

    def _config_path(self, name: str) -> Path | None:
        """The program's config under :attr:`configs`; the test sink's always from traintel's
        own files (it is no part of a compose project)."""
        base = project.root() if name == SINK.name else self.configs
        return next((base / p for p in CONFIGS[name] if (base / p).is_file()), None)

    def _compose_service(self, name: str) -> dict[str, Any]:
        """The docker-compose.yml service of a program ({} when there is no compose file)."""
        try:
            services = (
                yaml.safe_load((self.configs / "docker-compose.yml").read_text()) or {}
            ).get("services") or {}
        except OSError:
            return {}
        spec = PROGRAMS[name]
        by_name = [s for n, s in services.items() if n in spec.hosts]
        by_image = [
            s
            for s in services.values()
            if spec.image and str(s.get("image", "")).split(":")[0] == spec.image.split(":")[0]
        ]
        found: dict[str, Any] = (by_name or by_image or [{}])[0]
        return found

    def _mounts(self, name: str, compose: dict[str, Any]) -> list[tuple[str, str]]:
        """(container path, host path) pairs, longest container path first."""
        mounts = {
            target: str(self.configs / rel if kind == "repo" else self.run_dir / name / "data")
            for target, (kind, rel) in DEFAULT_MOUNTS.get(name, {}).items()
        }
        for volume in compose.get("volumes") or []:
            if isinstance(volume, dict):
                src, target = volume.get("source", ""), volume.get("target", "")
            else:
                src, target = (volume.split(":") + [""])[:2]
            if not target:
                continue
            if src.startswith((".", "/")):
                mounts[target] = str((self.configs / src).resolve())
            else:
                mounts[target] = str(self.run_dir / name / "data")
        return sorted(mounts.items(), key=lambda kv: -len(kv[0]))

    def _rewrite(self, value: Any, owner: str, mounts: list[tuple[str, str]], key: str = "") -> Any:
        """Adapt one config value (recursively) to this host: addresses, ports, paths."""
        if isinstance(value, dict):
            return {k: self._rewrite(v, owner, mounts, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rewrite(v, owner, mounts, key) for v in value]
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and "port" in key.lower():
            return self._port(owner, value) or value
        if not isinstance(value, str):
            return value
        if value in LOCAL_HOSTS and any(w in key.lower() for w in ("addr", "host")):
            return "127.0.0.1"
        for target, host_path in mounts:
            if value == target or value.startswith(target.rstrip("/") + "/"):
                return host_path + value[len(target.rstrip("/")) :]
        return ADDRESS.sub(lambda m: self._address(owner, m), value)

    def _address(self, owner: str, match: re.Match[str]) -> str:
        host, port = match["host"], int(match["port"])
        if host in LOCAL_HOSTS:
            target = owner
        else:
            target = next((n for n, c in PROGRAMS.items() if host in c.hosts), "")
            if not target:
                return match[0]
        return f"127.0.0.1:{self._port(target, port) or port}"

    def _port(self, name: str, port: int) -> int | None:
        for port_name, default in PROGRAMS[name].ports.items():
            if default == port:
                return self.ports[name][port_name]
        return None


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict((item.split("=", 1) + [""])[:2] for item in env)
    return {str(k): str(v) for k, v in env.items() if v is not None}


def _interpolate(value: str) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` from this environment (an
    unset required variable becomes empty; ``_why_unavailable`` says what to set)."""

    def one(match: re.Match[str]) -> str:
        name, op, fallback = match.group(1), match.group(2) or "", match.group(3) or ""
        found = environment.snapshot().get(name, "")
        return found if found or op != ":-" else fallback

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _absolute(path: str, source: Path) -> str:
    return path if os.path.isabs(path) else str(source.parent / path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited child not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
