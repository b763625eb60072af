"""The live page at ``/`` of a run's endpoint, opened in a real Chromium (``tests/browser.py``):
what it draws and shows equals the record, it follows the run without a reload, its debug
toggle works and a page of another site cannot flip it."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from browser import browser, page, shots_dir  # noqa: F401  (fixtures)
from conftest import read_lines
from traintel.export import page as live_page


def _train(run: Any, steps: int, start: int = 0) -> None:
    """Steps as a loop logs them in ``run.track`` (timed, with data wait), an eval every 40."""
    for i in run.track(range(start, start + steps)):
        run.log(loss=2.0 / (1 + i) + 0.01 * (i % 7), lr=0.1 * 0.99**i, samples=64)
        if (i + 1) % 40 == 0:
            run.log_eval(val_loss=1.0 / (1 + i) + 0.05 * ((i // 40) % 2), accuracy=i / 1000)


def _shown(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("""() => {
        const p = window.traintelPage;
        const best = {};
        for (const tr of document.querySelectorAll('#evals tr'))
            best[tr.dataset.metric] = tr.querySelector('.best').textContent;
        return {steps: Number(document.getElementById('steps-count').textContent),
                lastLoss: document.getElementById('last-loss').textContent,
                loss: p.charts.loss.plot ? p.charts.loss.plot.data : null,
                lr: p.charts.lr.plot ? p.charts.lr.plot.data : null,
                wait: p.charts.data_wait.plot ? p.charts.data_wait.plot.data : null,
                best, debug: document.getElementById('debug').textContent};
    }""")
    return result


def _fmt(page: Any, value: float) -> str:
    return str(page.evaluate("(v) => { return (" + _FMT + ")(v); }", value))


# the page's own number formatting, to compare text with the record's numbers
_FMT = """(n) => Number.isInteger(n) ? String(n) :
    (Math.abs(n) >= 1e4 || (n !== 0 && Math.abs(n) < 1e-3) ? n.toExponential(3) : n.toPrecision(5))"""


def test_the_live_page_shows_every_step_of_the_record_and_follows_the_run(quiet_run, page):
    run = quiet_run(name="live-page", http_port=0, total_steps=400)
    try:
        _train(run, 200)
        run.event("checkpoint_saved", path="ckpt-200.pt")
        run.flush()
        page.goto(run.server.url)
        steps = read_lines(run.dir).of("step")
        page.wait_for_function(
            f"() => document.getElementById('steps-count').textContent == '{len(steps)}'",
            timeout=20_000,
        )
        page.wait_for_function("() => window.traintelPage.charts.loss.plot", timeout=10_000)
        shown = _shown(page)
        assert shown["steps"] == len(steps) == 200
        # every step's loss and lr, as recorded, in the charts
        assert shown["loss"][0] == [s["step"] for s in steps]
        assert shown["loss"][1] == pytest.approx([s["metrics"]["loss"] for s in steps])
        assert shown["lr"][1] == pytest.approx([s["metrics"]["lr"] for s in steps])
        assert shown["wait"][1] == pytest.approx([s["data_wait_s"] for s in steps])
        assert shown["lastLoss"] == _fmt(page, steps[-1]["metrics"]["loss"])
        evals = read_lines(run.dir).of("eval")
        assert shown["best"]["val_loss"] == _fmt(page, evals[-1]["best"]["val_loss"])
        assert shown["best"]["val_loss"] == _fmt(page, min(e["metrics"]["val_loss"] for e in evals))
        assert "checkpoint_saved" in page.inner_text("#events")
        assert page.inner_text("#step") == str(run.state.step)

        # live: new steps reach the open page, without a reload
        page.evaluate("() => { window.notReloaded = true; }")
        _train(run, 60, start=200)
        run.flush()
        page.wait_for_function(
            "() => document.getElementById('steps-count').textContent == '260'", timeout=20_000
        )
        shown = _shown(page)
        assert page.evaluate("() => window.notReloaded") is True
        steps = read_lines(run.dir).of("step")
        page.wait_for_function(
            "() => window.traintelPage.charts.loss.plot.data[0].length == 260", timeout=10_000
        )
        shown = _shown(page)
        assert shown["loss"][0] == [s["step"] for s in steps]
        assert shown["loss"][1] == pytest.approx([s["metrics"]["loss"] for s in steps])
        page.wait_for_function(
            "() => document.getElementById('step').textContent == '260'", timeout=10_000
        )
        assert "offline" in page.inner_text("#export")  # the quiet run exports nothing
        shot = shots_dir() / "live-page.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    finally:
        run.finish()
    # the run ended: the page keeps what it showed and says how the run ended
    page.wait_for_function(
        "() => document.getElementById('status').textContent == 'finished'", timeout=20_000
    )
    assert _shown(page)["steps"] == 260


def test_status_prints_the_live_page_address(quiet_run, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from traintel.cli import main

    monkeypatch.setenv("TRAINTEL_DIR", str(tmp_path))
    runner = CliRunner()
    with quiet_run(name="addressed", http_port=0) as run:
        _train(run, 3)
        url = run.server.url
        shown = runner.invoke(main, ["status", str(run.dir), "--format", "json"])
        assert json.loads(shown.output)["page"] == url
        opened = runner.invoke(main, ["status", "--open"])
        assert opened.exit_code == 0 and opened.output.strip() == url
        with urllib.request.urlopen(opened.output.strip(), timeout=5) as response:
            assert b"/page.js" in response.read()
        live = runner.invoke(main, ["status", "--url", url.rstrip("/"), "--open"])
        assert live.output.strip() == url
    ended = runner.invoke(main, ["status", str(run.dir), "--open"])
    assert ended.exit_code != 0 and "no live page" in ended.output
    assert not (Path(run.dir) / live_page.PAGE_FILE).exists()


MARKUP = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'


def test_the_page_reports_an_error_with_its_class_and_hint(quiet_run, page):
    """Errors with their class and hints; what a run records is shown as text, never as markup
    (an event field, a log line, an exception message with HTML in them)."""
    with quiet_run(name="errors", http_port=0) as run:
        _train(run, 5)
        run.event("checkpoint_saved", path=MARKUP)
        run.logger("data").warning("bad sample %s", MARKUP)
        try:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except RuntimeError as exc:
            error = run.error(exc)
        run.flush()
        page.goto(run.server.url)
        page.wait_for_selector("#errors li", timeout=20_000)
        text = page.inner_text("#errors")
        assert error is not None and error["error_type"] in text
        assert error["hints"] and error["hints"][0] in text
        page.wait_for_function(
            "() => document.getElementById('logs').textContent.includes('bad sample')",
            timeout=20_000,
        )
        assert MARKUP in page.inner_text("#events") and MARKUP in page.inner_text("#logs")
        assert page.evaluate("() => window.pwned") is None


class _SiteHandler(http.server.BaseHTTPRequestHandler):
    """Another site, on another port: a page that tries to switch the run's debug mode."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><html><body>
<form id=f method=POST action="{self.target}debug" enctype="text/plain">
<input name='{{"enabled": true, "x": "' value='"}}'></form>
<iframe id=frame src="{self.target}"></iframe>
<script>
  window.attempts = [];
  fetch("{self.target}debug", {{method: "POST", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}}, body: '{{"enabled": true}}'}})
    .then(() => attempts.push("simple")).catch(() => attempts.push("simple-refused"));
  fetch("{self.target}debug", {{method: "POST",
        headers: {{"Content-Type": "application/json"}}, body: '{{"enabled": true}}'}})
    .then(() => attempts.push("json")).catch(() => attempts.push("json-refused"));
</script></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_debug_toggle_works_and_another_site_cannot_flip_it(quiet_run, page, browser):
    with quiet_run(name="debug", http_port=0) as run:
        _train(run, 3)
        url = run.server.url
        # another site (another origin: another port, another name for loopback) tries
        _SiteHandler.target = url
        site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SiteHandler)
        threading.Thread(target=site.serve_forever, daemon=True).start()
        try:
            attacker = browser.new_page()
            attacker.goto(f"http://localhost:{site.server_address[1]}/")
            attacker.wait_for_function("() => window.attempts.length == 2", timeout=10_000)
            with attacker.expect_navigation():
                attacker.evaluate("() => document.getElementById('f').submit()")
            attacker.close()
        finally:
            site.shutdown()
            site.server_close()
        assert run.debug is False
        assert _get(url + "debug") == {"enabled": False}

        page.goto(url)
        page.wait_for_function(
            "() => document.getElementById('debug').textContent == 'off'", timeout=20_000
        )
        page.click("#debug")
        page.wait_for_function("() => document.getElementById('debug').textContent == 'on'")
        assert run.debug is True and _get(url + "debug") == {"enabled": True}
        page.click("#debug")
        page.wait_for_function("() => document.getElementById('debug').textContent == 'off'")
        assert run.debug is False
    switches = [e["fields"] for e in read_lines(run.dir).of("event", "debug_mode")]
    assert [s["enabled"] for s in switches] == [True, False]
    assert all(s["source"].startswith("http from 127.0.0.1") for s in switches)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_the_page_loads_nothing_from_elsewhere_and_cannot_be_framed(quiet_run, page):
    """Its files are the package's own (uPlot vendored with its licence); the headers keep other
    sites from framing it."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    with quiet_run(name="offline", http_port=0) as run:
        _train(run, 3)
        page.goto(run.server.url)
        page.wait_for_function("() => window.uPlot && window.traintelPage", timeout=20_000)
        with urllib.request.urlopen(run.server.url, timeout=5) as response:
            headers = response.headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
    assert requested and all(u.startswith(run.server.url) for u in requested), requested
    licence = live_page.page_file("/uPlot.LICENSE")
    assert licence is not None and b"MIT" in licence[0]


def test_the_vendored_uplot_is_the_locked_version() -> None:
    """tools/page/package-lock.json pins the uPlot the package carries."""
    root = Path(__file__).parent.parent
    lock = json.loads((root / "tools/page/package-lock.json").read_text())
    version = lock["packages"]["node_modules/uplot"]["version"]
    vendored = live_page.page_file("/uPlot.iife.min.js")
    assert vendored is not None and f"(v{version})".encode() in vendored[0][:200]


def test_links_name_only_what_is_configured(monkeypatch):
    for name in ("TRAINTEL_GRAFANA_URL", "GRAFANA_URL", "TRAINTEL_PROMETHEUS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert live_page.links() == {}
    monkeypatch.setenv("TRAINTEL_GRAFANA_URL", "http://grafana.example:3000/")
    assert live_page.links() == {"grafana": "http://grafana.example:3000/dashboards"}
    monkeypatch.setenv("TRAINTEL_PROMETHEUS_URL", "javascript:alert(1)")
    assert "prometheus" not in live_page.links()
    monkeypatch.setenv("TRAINTEL_PROMETHEUS_URL", "http://admin:hunter2@prom.example:9090")
    assert "hunter2" not in live_page.links()["prometheus"]
