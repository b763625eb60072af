"""Values, names and enumerations at every door: whatever a user passes is recorded and exported
within the types every path carries (float64, int64, UTF-8), or refused with an error naming the
key; one budget bounds the names of every API; the record, /status and /metrics keep working."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest

import traintel
from reliability_log import record
from traintel.core.validate import INT64_MAX, INT64_MIN, MAX_NAME_LENGTH

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NUMPY_TYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
]
TORCH_TYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]


def _numpy(draw_value: float | int, kind: type) -> object:
    try:
        with np.errstate(all="ignore"):
            return kind(draw_value)
    except (OverflowError, ValueError):
        return kind(0)


def _tensor(value: float | int, dtype: torch.dtype) -> object:
    try:
        return torch.tensor(value, dtype=dtype)
    except (OverflowError, RuntimeError, TypeError):
        return torch.tensor(0, dtype=dtype)


#: every kind of number a training loop holds, at every size (integers of any size)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.builds(
        _numpy, st.one_of(st.integers(-(2**64), 2**64), st.floats()), st.sampled_from(NUMPY_TYPES)
    ),
    st.builds(
        _tensor,
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats()),
        st.sampled_from(TORCH_TYPES),
    ),
    st.builds(Fraction, st.integers(), st.integers(min_value=1)),
    st.builds(Decimal, st.integers()),
    st.just(10**400),
    st.just(2**64),
    st.just(2**63),
    st.just(-(2**63) - 1),
)
keys = st.sampled_from(["loss", "lr", "grad_norm", "samples", "tokens", "acc", "train/loss"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, quiet, recorded):
    run = traintel.init(
        project="adversarial",
        dir=str(tmp_path_factory.mktemp("values")),
        **{**quiet, "max_metric_names": 100_000},
        http_port=0,
        strict=True,
    )
    yield run
    run.finish()
    assert run.summary["record"]["dropped"] == 0
    for line in recorded(run.dir):  # every line written under fuzzing parses as JSON
        assert line["type"]


def _exported(value: object) -> bool:
    """Whether a recorded value fits what every export path carries."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, float)


def _still_serves(run) -> None:
    """/status is JSON; /metrics renders (no scrape breaks on what was logged)."""
    orjson.loads(orjson.dumps(run.status_dict()))
    generate_latest(run.registry)


@SETTINGS
@given(values=st.dictionaries(keys, numbers, min_size=1, max_size=4))
def test_any_number_is_recorded_within_the_exported_types_or_refused(run, values):
    try:
        run.log(**values)
    except (TypeError, ValueError) as exc:
        assert any(repr(k) in str(exc) for k in values), str(exc)
    else:
        for key in values:
            if key in run.state.latest:
                assert _exported(run.state.latest[key]), (key, run.state.latest[key])
    _still_serves(run)


@SETTINGS
@given(value=numbers, kind=st.sampled_from(["counter", "gauge", "histogram", "timer"]))
def test_instruments_take_what_run_log_takes(run, value, kind):
    instrument = getattr(run, kind)(f"adv_{kind}")
    call = {"counter": "inc", "gauge": "set", "histogram": "observe", "timer": "observe"}[kind]
    try:
        getattr(instrument, call)(value)
    except (TypeError, ValueError) as exc:
        assert f"adv_{kind}" in str(exc), str(exc)
    _still_serves(run)


names = st.one_of(
    st.text(max_size=40),
    st.text(min_size=90, max_size=130),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_./:-]{0,30}", fullmatch=True),
    st.just("x" * 5000),
    st.just("bad\udcffname"),
)


@SETTINGS
@given(
    name=names,
    api=st.sampled_from(
        ["log", "log_eval", "event", "span", "counter", "gauge", "histogram", "timer", "logger"]
    ),
)
def test_every_name_taking_api_applies_the_same_rules(run, name, api):
    calls = {
        "log": lambda: run.log(**{name: 1.0}),
        "log_eval": lambda: run.log_eval(**{name: 1.0}),
        "event": lambda: run.event(name),
        "span": lambda: run.span(name).__enter__(),
        "logger": lambda: run.logger(name),
    }
    call = calls.get(api, lambda: getattr(run, api)(name))
    valid = (
        0 < len(name) <= MAX_NAME_LENGTH
        and name.isascii()
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c in "_./:@-" for c in name)
    )
    try:
        span = call()
    except (TypeError, ValueError) as exc:
        assert not valid, exc
        assert repr(name) in str(exc) or f"{len(name)} characters" in str(exc), str(exc)
        assert len(str(exc)) < 1000  # a 5,000-character name is not repeated whole
    else:
        assert valid, name
        if api == "span":
            span.end()
    _still_serves(run)


@SETTINGS
@given(
    severity=st.one_of(st.sampled_from(["critical", "high", "medium", "low"]), st.text()),
    level=st.one_of(st.sampled_from(["debug", "info", "warning", "error", "critical"]), st.text()),
)
def test_enumerations_are_enumerations(run, severity, level):
    try:
        run.error(ValueError("x"), severity=severity)
    except ValueError as exc:
        assert severity not in ("critical", "high", "medium", "low")
        assert "severity must be one of" in str(exc)
    try:
        run.event("enum_probe", level=level)
    except ValueError as exc:
        assert level not in ("debug", "info", "warning", "error", "critical")
        assert "level must be one of" in str(exc)
    assert {s for _, s in run.state.errors} <= {"critical", "high", "medium", "low"}


@SETTINGS
@given(
    fields=st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(),
                st.just("\udcff\udc80"),
                st.just(10**400),
                st.binary(max_size=20),
            ),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=30,
        ),
        max_size=5,
    )
)
def test_free_form_fields_never_cost_their_line(run, fields):
    fields.pop("level", None)
    fields.pop("step", None)
    dropped = run.state.dropped
    run.event("fields_probe", **fields)
    run.flush()
    assert run.state.dropped == dropped


def test_the_names_of_every_api_share_one_budget(tmp_path, quiet):
    """3,000 distinct names through log_eval, span, event and error used to pass, 72,784 series on
    /metrics; now the first 50 of them across every API are admitted and the rest refused."""
    with traintel.init(
        project="budget", dir=str(tmp_path), **quiet, max_metric_names=50, http_port=0, strict=True
    ) as run:
        admitted = refused = 0
        for i in range(3000):
            api = ("log_eval", "span", "event", "counter")[i % 4]
            try:
                if api == "log_eval":
                    run.log_eval(**{f"m{i}": 1.0})
                elif api == "span":
                    with run.span(f"s{i}"):
                        pass
                elif api == "event":
                    run.event(f"e{i}")
                else:
                    run.counter(f"c{i}").inc()
                admitted += 1
            except ValueError as exc:
                assert "limit is 50 names in all" in str(exc)
                refused += 1
            try:
                run.error(RuntimeError("x"), operation=f"op{i}", severity="low")
            except ValueError:
                pytest.fail("an error is always recorded")
        series = [
            line
            for line in generate_latest(run.registry).decode().splitlines()
            if line and not line.startswith("#")
        ]
    assert admitted == 50 and refused == 2950
    assert len(series) < 1000, len(series)
    record(
        "3,000 distinct names through log_eval, span, event, counter; 3,000 error operations",
        "one name budget for every API; errors always recorded",
        f"{admitted} admitted, {refused} refused with the limit named; {len(series)} series "
        "on /metrics (before: 72,784)",
    )


def test_surrogates_are_escaped_once_for_every_sink(tmp_path, quiet, recorded):
    """Text decoded from non-UTF-8 bytes (file names, argv, environment) reaches the record,
    config.json, /status and /metrics as text every encoder takes."""
    odd = b"/data/caf\xe9/shard-\xff.bin".decode("utf-8", "surrogateescape")
    with traintel.init(
        project="proj-\udcff",
        name=odd[-12:],
        dir=str(tmp_path),
        **quiet,
        config={"path": odd, odd: 1},
        http_port=0,
    ) as run:
        run.log(loss=1.0)
        run.event("opened", path=odd)
        _still_serves(run)
        metrics = generate_latest(run.registry).decode()
    raw = b"".join(p.read_bytes() for p in run.dir.iterdir() if p.is_file())
    raw.decode("utf-8")  # nothing unencodable was written
    config = orjson.loads((run.dir / "config.json").read_bytes())["config"]
    assert config["path"] == "/data/caf\\udce9/shard-\\udcff.bin"
    assert 'project="proj-\\\\udcff"' in metrics
    events = [line for line in recorded(run.dir) if line.get("event") == "opened"]
    assert events[0]["fields"]["path"] == config["path"]
    record(
        "surrogate-escaped text in project, name, config, event fields",
        "escaped once at the door; record, config.json, /status, /metrics all encode",
        f"{len(raw)} bytes written, all UTF-8; config path {config['path']!r}",
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (2**63, float(2**63)),
        (2**64, float(2**64)),
        (-(2**63) - 1, float(-(2**63) - 1)),
        (np.uint64(2**64 - 1), float(2**64 - 1)),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_integers_beyond_int64_are_exported_as_floats(tmp_path, value, expected, quiet):
    with traintel.init(project="ints", dir=str(tmp_path), **quiet, http_port=0) as run:
        run.log(big=value)
        assert run.state.latest["big"] == expected and type(run.state.latest["big"]) is type(
            expected
        )
        scraped = [
            line
            for line in generate_latest(run.registry).decode().splitlines()
            if line.startswith("traintel_metric{")
        ]
        assert float(scraped[0].rsplit(" ", 1)[1]) == pytest.approx(float(expected))
        _still_serves(run)


def test_a_number_beyond_float64_is_refused_naming_the_key_and_loses_nothing(
    tmp_path, quiet, recorded
):
    """run.log(loss=10**400) used to throw away the writer's whole batch (run_start and config
    included), break every /metrics scrape and OTLP export, and make finish() raise."""
    with traintel.init(project="huge", dir=str(tmp_path), **quiet, http_port=0, strict=True) as run:
        run.log(loss=1.0)
        with pytest.raises(ValueError, match="'loss' is an integer of 1329 bits, beyond float64"):
            run.log(loss=10**400)
        run.log(loss=2.0)
        _still_serves(run)
    lines = recorded(run.dir)
    assert [line["type"] for line in lines][:2] == ["run_start", "config"]
    assert [s["metrics"]["loss"] for s in lines if s["type"] == "step"] == [1.0, 2.0]
    assert run.summary["record"]["dropped"] == 0 and math.isfinite(run.summary["loss"]["mean"])
    record(
        "run.log(loss=10**400)",
        "refused with the key named; nothing else lost",
        "ValueError naming 'loss'; run_start, config and both good steps kept; dropped 0; "
        "/status and /metrics serve",
    )
