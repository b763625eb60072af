"""Build (once) the stack's programs into ``~/.cache/traintel/bin/<name>-<version>/``.

Every machine here is Docker-less, so the tests run the real collector, Prometheus and
Alertmanager natively. Loki, Tempo and Grafana are AGPL-licensed: traintel never downloads or
builds them, and uses a binary the user supplies (``TRAINTEL_LOKI_BIN`` or ``loki`` on PATH, ...). Building them from Go modules takes tens of minutes cold on 2 cores, so each
build is keyed by its version and inputs (manifest, wrapper go.mod/go.sum, Go version) and a
warm machine does nothing. Go's module and build caches live under ``~/.cache/traintel/go/``.

Outcomes go to ``bin/status.json``: a component that could not be had is recorded with the
reason, so tests that need it skip saying why instead of the whole install failing. Optional
components that failed are not retried until their inputs change (``retry=True`` forces it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from traintel.core import env as environment
from traintel.stack import project
from traintel.stack.components import COMPONENTS, DEPLOY_TOOLS, Component


def cache_dir() -> Path:
    return Path(environment.TRAINTEL_CACHE.get() or "~/.cache/traintel").expanduser()


def bin_root() -> Path:
    return cache_dir() / "bin"


def status_path() -> Path:
    return bin_root() / "status.json"


def load_status() -> dict[str, dict[str, Any]]:
    try:
        loaded: dict[str, dict[str, Any]] = json.loads(status_path().read_text())
        return loaded
    except (OSError, ValueError):
        return {}


def binary(component: str, name: str | None = None) -> Path | None:
    """Path of an installed program (``name`` defaults to the component's first binary).

    Programs traintel does not build (method "none": Loki, Tempo, Grafana) are looked up now,
    where the user put them (:func:`user_binary`), so a binary supplied after ``install`` counts.
    """
    spec = _spec(component)
    if spec.method == "none":
        return user_binary(spec, name)
    entry = load_status().get(component)
    if not entry or not entry.get("ok"):
        return None
    path = Path(entry["dir"]) / (name or spec.binaries[0])
    return path if os.access(path, os.X_OK) else None


def _spec(name: str) -> Component:
    return COMPONENTS.get(name) or DEPLOY_TOOLS[name]


def user_binary(component: Component, name: str | None = None) -> Path | None:
    """The binary a user supplies for a program traintel never builds: the file named by
    ``component.bin_env`` (``TRAINTEL_LOKI_BIN``, ...), else ``name`` found on PATH."""
    name = name or component.binaries[0]
    named = (environment.variable(component.bin_env).get() or "") if component.bin_env else ""
    if named and name == component.binaries[0]:
        path = Path(named).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


def missing_reason(component: str) -> str | None:
    """None when the component is installed, else why not and how to get it (for pytest skips
    and ``traintel stack up/status``)."""
    if binary(component):
        return None
    spec = _spec(component)
    named = (environment.variable(spec.bin_env).get() or "") if spec.bin_env else ""
    if named:
        return f"{component}: {spec.bin_env}={named} is not an executable file ({spec.unavailable})"
    entry = load_status().get(component)
    if spec.method == "none":
        return f"{component} {spec.version} is not available: {spec.unavailable}"
    if entry and entry.get("reason"):
        return f"{component} {entry['version']} is not available: {entry['reason']}"
    return f"{component} is not installed: run `traintel stack install`"


class BuildError(Exception):
    """A build step failed; the message names the step and ends with the log's tail."""


def install(
    names: list[str] | None = None,
    retry: bool = False,
    say: Callable[[str], None] = print,
    table: dict[str, Component] = COMPONENTS,
) -> dict[str, dict[str, Any]]:
    """Make every component of ``table`` (or ``names``) available; returns the status of each.

    Never raises for a failed build: the failure is recorded with its reason."""
    bin_root().mkdir(parents=True, exist_ok=True)
    with _lock(bin_root() / ".lock", say):
        status = load_status()
        for component in table.values():
            if names and component.name not in names:
                continue
            key = _build_key(component)
            entry = status.get(component.name, {})
            if entry.get("build_key") == key:
                if entry.get("ok") and all(
                    os.access(Path(entry["dir"]) / b, os.X_OK) for b in component.binaries
                ):
                    continue
                if not entry.get("ok") and not component.required and not retry:
                    continue
            status[component.name] = _provide(component, key, say)
            _write_status(status)
        if (
            "prometheus" in table
            and status.get("prometheus", {}).get("ok")
            and (not names or "prometheus" in names)
        ):
            why = build_prometheus_ui(say, retry=retry)
            if why:
                say(
                    f"stack: Prometheus's web UI not built ({why.splitlines()[0]}); its API "
                    "works; `traintel stack install --retry` tries again"
                )
    return status


#: the pnpm that builds Prometheus's web UI (its sources are a pnpm workspace with a lock file)
PNPM = "pnpm@10.34.9"


def prometheus_ui_dir() -> Path:
    """Prometheus's web UI assets built from its module's sources (``web/ui/static``); ``stack
    up`` serves them (a Prometheus built without ``builtinassets`` reads ``./web/ui/static``
    from its working directory, which is ``<run dir>/prometheus``)."""
    return bin_root() / f"prometheus-ui-{COMPONENTS['prometheus'].version}" / "static"


def build_prometheus_ui(say: Callable[[str], None] = print, retry: bool = False) -> str | None:
    """Build Prometheus's web UI (mantine-ui) as its Makefile does: ``pnpm install
    --frozen-lockfile`` (no dependency install scripts: pnpm 10's default) and ``build_ui.sh
    --mantine-ui``, from npm, once per version. Returns None when the UI is there, else why
    not (also kept in a ``failed`` file, so that only ``--retry`` builds again)."""
    dest = prometheus_ui_dir()
    failed = dest.parent / "failed"
    if (dest / "mantine-ui" / "index.html").is_file():
        return None
    if failed.is_file() and not retry:
        return failed.read_text()
    component = COMPONENTS["prometheus"]
    log = bin_root() / "logs" / f"prometheus-ui-{component.version}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = bin_root() / f".tmp-prometheus-ui-{component.version}"
    say(f"stack: building Prometheus's web UI {component.version} (pnpm; log {log})")
    try:
        if not shutil.which("npx"):
            raise BuildError("`npx` is not on PATH (Node.js >= 20 with npm is needed)")
        shutil.rmtree(tmp, ignore_errors=True)
        source = module_dir("github.com/prometheus/prometheus", component.module_version)
        shutil.copytree(source / "web" / "ui", tmp)
        subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=True)
        shim = tmp / ".traintel-bin"
        shim.mkdir()
        (shim / "pnpm").write_text(f'#!/bin/sh\nexec npx -y {PNPM} "$@"\n')
        (shim / "pnpm").chmod(0o755)
        env = {
            "PATH": f"{shim}:{environment.snapshot().get('PATH', '')}",
            "npm_config_cache": str(cache_dir() / "npm"),
            # pnpm's package store (~400 MB) inside the build directory, removed with it
            "npm_config_store_dir": str(tmp / ".pnpm-store"),
            "npm_config_update_notifier": "false",
        }
        log.write_text("")
        _run(["npx", "-y", PNPM, "install", "--frozen-lockfile"], log, cwd=tmp, env=env)
        _run(["bash", "build_ui.sh", "--mantine-ui"], log, cwd=tmp, env=env)
        shutil.rmtree(dest.parent, ignore_errors=True)
        dest.parent.mkdir(parents=True)
        (tmp / "static").rename(dest)
    except (BuildError, OSError, subprocess.SubprocessError) as error:
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(str(error))
        return str(error)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"stack: Prometheus's web UI built into {dest}")
    return None


def _provide(component: Component, key: str, say: Callable[[str], None]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": component.name,
        "version": component.version,
        "required": component.required,
        "build_key": key,
        "ok": False,
        "dir": "",
        "source": "",
        "seconds": 0.0,
        "reason": "",
    }
    if component.method == "none":
        supplied = user_binary(component)
        if supplied is None:
            entry["reason"] = missing_reason(component.name) or component.unavailable
            say(f"stack: {component.name} {component.version}: skipped ({entry['reason']})")
            return entry
        version = _reported_version(supplied) or "unknown"
        skew = "" if version == component.version else f", not {component.version}"
        entry.update(
            ok=True, dir=str(supplied.parent), source="user", version=version, path=str(supplied)
        )
        say(f"stack: {component.name}: using your binary {supplied} (version {version}{skew})")
        return entry
    dest = bin_root() / component.key
    log = bin_root() / "logs" / f"{component.key}.log"
    log.parent.mkdir(exist_ok=True)
    say(f"stack: building {component.name} {component.version} ({component.method}; log {log})")
    started = time.monotonic()
    try:
        if component.method == "apt":
            entry.update(_apt_install(component, log), ok=True, source="apt")
        elif component.method == "npm":
            _npm_install(component, dest, log)
            entry.update(ok=True, dir=str(dest), source="npm")
        else:
            _go_build(component, dest, log)
            entry.update(ok=True, dir=str(dest), source="go")
    except Exception as error:  # noqa: BLE001  (one program's failure must not stop the others)
        entry["reason"] = (
            str(error) if isinstance(error, BuildError) else f"{type(error).__name__}: {error}"
        )
        if component.apt and component.method != "apt":
            say(f"stack: {component.name}: Go build failed, trying Debian packages {component.apt}")
            try:
                entry.update(_apt_install(component, log), ok=True, source="apt")
            except BuildError as apt_error:
                entry["reason"] += f"; Debian fallback: {apt_error}"
    entry["seconds"] = round(time.monotonic() - started, 1)
    if entry["ok"]:
        skew = (
            f" (Debian {entry['version']}, not {component.version})"
            if entry["source"] == "apt" and entry["version"] != component.version
            else ""
        )
        say(f"stack: {component.name} ready in {entry['seconds']:.0f}s{skew}")
    else:
        say(f"stack: {component.name} {component.version} FAILED: {entry['reason']}")
    return entry


def _reported_version(path: Path) -> str:
    """``X.Y.Z`` from ``<binary> --version`` (Loki, Tempo and Grafana all print one), or ""."""
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r"version\s+v?(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return found.group(1) if found else ""


def _go_build(component: Component, dest: Path, log: Path) -> None:
    if not shutil.which("go"):
        raise BuildError("`go` is not on PATH (Go >= 1.26 is needed to build the stack)")
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ldflags = "-s -w"
    if component.version_var:
        ldflags += f" -X {component.version_var}={component.version}"
    flags = ["-trimpath", f"-ldflags={ldflags}"]
    if component.build_tags:
        flags += ["-tags", component.build_tags]
    log.write_text("")
    if component.method == "go-wrapper":
        _run(
            ["go", "build", *flags, "-o", f"{tmp}{os.sep}", *component.packages],
            log,
            cwd=project.root() / component.wrapper,
        )
    elif component.method == "go-module":
        _run(
            ["go", "build", *flags, "-o", f"{tmp}{os.sep}", *component.packages],
            log,
            cwd=_module_copy(component),
        )
    elif component.method == "ocb":
        _build_collector(component, tmp, log)
    else:
        raise BuildError(f"unknown build method {component.method!r}")
    missing = [b for b in component.binaries if not (tmp / b).is_file()]
    if missing:
        raise BuildError(f"the build produced no {', '.join(missing)} (see {log})")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _npm_install(component: Component, dest: Path, log: Path) -> None:
    """``npm ci`` of the package in ``component.wrapper`` (its lock file pins every version),
    in a copy under the cache; no install scripts run. npm's cache lives in the cache too."""
    if not shutil.which("npm"):
        raise BuildError("`npm` is not on PATH (Node.js >= 20 with npm is needed)")
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in component.inputs:
        shutil.copy2(project.root() / rel, tmp / Path(rel).name)
    log.write_text("")
    _run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        log,
        cwd=tmp,
        env={"npm_config_cache": str(cache_dir() / "npm"), "npm_config_update_notifier": "false"},
    )
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _module_copy(component: Component) -> Path:
    """A writable copy of the component's Go module with ``extra_files`` added: building
    inside it makes it the main module, so its own go.mod and go.sum apply."""
    copy = cache_dir() / "go" / "src" / component.key
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(module_dir(component.module, component.module_version), copy)
    subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)  # the module cache is read-only
    for rel, content in component.extra_files.items():
        path = copy / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return copy


def module_dir(module: str, version: str) -> Path:
    """The read-only source of a Go module version, downloaded once into the cache's module
    cache (also how the tests get the CRDs and API schemas that operators publish in theirs)."""
    spec = f"{module}@{version}"
    cache_dir().mkdir(parents=True, exist_ok=True)
    found = subprocess.run(
        ["go", "mod", "download", "-json", spec],
        capture_output=True,
        text=True,
        cwd=cache_dir(),
        env={**environment.snapshot(), **_go_env()},
    )
    if found.returncode != 0:
        raise BuildError(f"`go mod download {spec}` failed:\n{found.stdout}{found.stderr}")
    return Path(json.loads(found.stdout)["Dir"])


def _build_collector(component: Component, out: Path, log: Path) -> None:
    """Install the OCB builder at the collector's release, then build our manifest with it."""
    builder_dir = cache_dir() / "go" / "bin" / f"builder-{component.module_version}"
    builder = builder_dir / "builder"
    if not builder.exists():
        _run(
            ["go", "install", f"{component.packages[0]}@{component.module_version}"],
            log,
            cwd=out,
            env={"GOBIN": str(builder_dir)},
        )
    source = out / "src"
    # The manifest with its output path replaced as text: the installer imports nothing outside
    # the standard library, so that `make test` can build while pip installs the environment.
    manifest, found = re.subn(
        r"(?m)^(\s+output_path:).*$",
        lambda m: f"{m.group(1)} {json.dumps(str(source))}",
        (project.root() / component.manifest).read_text(),
    )
    if found != 1:
        raise BuildError(f"{component.manifest} has {found} output_path lines, not one")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=out, delete=False) as f:
        f.write(manifest)
    # Strict versioning: fail when a module would drag in another release instead of building
    # a mixed-version collector.
    _run([str(builder), "--skip-strict-versioning=false", "--config", f.name], log, cwd=out)
    name = component.binaries[0]  # the manifest's dist.name
    (source / name).rename(out / name)
    shutil.rmtree(source)
    os.unlink(f.name)


def _apt_install(component: Component, log: Path) -> dict[str, Any]:
    """Debian's (older) packages, linked into the component's directory; records the skew."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BuildError("needs root and apt-get")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run(
        # waits for dpkg's lock rather than failing while another apt-get runs (make test's
        # Chromium install beside the background build)
        [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "-y",
            "--no-install-recommends",
            *component.apt,
        ],
        log,
        env=env,
        retry_with=["apt-get", "update"],
    )
    version = (
        subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", component.apt[0]], capture_output=True, text=True
        )
        .stdout.split("+")[0]
        .split("-")[0]
    )
    dest = bin_root() / f"{component.name}-debian-{version}"
    dest.mkdir(exist_ok=True)
    for b in component.binaries:
        path = shutil.which(component.apt_names.get(b, b))
        if not path:
            raise BuildError(f"Debian package {component.apt} has no {b}")
        link = dest / b
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return {"dir": str(dest), "version": version}


def _run(
    argv: list[str],
    log: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    retry_with: list[str] | None = None,
) -> None:
    """Run one build step, its output appended to ``log``; BuildError with the tail on failure."""
    full_env = {**environment.snapshot(), **_go_env(), **(env or {})}
    for attempt in range(2):
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            code = subprocess.run(
                argv, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT
            ).returncode
        if code == 0:
            return
        if attempt == 0 and retry_with:
            with log.open("a") as out:
                subprocess.run(retry_with, env=full_env, stdout=out, stderr=subprocess.STDOUT)
            continue
        break
    tail = log.read_text(errors="replace").strip().splitlines()[-12:]
    raise BuildError(
        f"`{' '.join(argv[:3])} ...` exited {code}; last lines:\n"
        + "\n".join(tail)
        + f"\n(full log: {log})"
    )


def _go_env() -> dict[str, str]:
    go = cache_dir() / "go"
    flags = environment.GOFLAGS.get() or ""
    return {
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        # Module cache files are read-only by default, which makes `rm -rf ~/.cache` fail.
        "GOFLAGS": f"{flags} -modcacherw".strip(),
    }


def _build_key(component: Component) -> str:
    """Changes whenever the build would produce something different."""
    h = hashlib.sha256()
    h.update(
        repr(
            (
                component.version,
                component.method,
                component.packages,
                component.module_version,
                component.build_tags,
                component.extra_files,
                component.version_var,
            )
        ).encode()
    )
    for rel in component.inputs:
        with contextlib.suppress(OSError):
            h.update((project.root() / rel).read_bytes())
    if component.method == "none":  # a binary the user supplies (or replaces) is looked at anew
        supplied = user_binary(component)
        with contextlib.suppress(OSError):
            h.update(f"{supplied}:{supplied.stat().st_mtime_ns}".encode() if supplied else b"")
    if component.method in ("ocb", "go-wrapper", "go-module") and shutil.which("go"):
        h.update(
            subprocess.run(
                ["go", "env", "GOVERSION"], capture_output=True, text=True
            ).stdout.encode()
        )
    return h.hexdigest()[:16]


def _write_status(status: dict[str, dict[str, Any]]) -> None:
    tmp = status_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True))
    tmp.replace(status_path())


@contextlib.contextmanager
def _lock(path: Path, say: Callable[[str], None]) -> Iterator[None]:
    """One installer at a time per machine: parallel test runs share the cache, and `make test`
    builds in the background while pip installs (scripts/build_programs.py)."""
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(
                f"stack: waiting for another install into {path.parent} (make test's background "
                f"build logs to {path.parent / 'logs' / 'make-test-build.log'})"
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
