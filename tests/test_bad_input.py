"""Property-based tests: whatever users pass, traintel records it or refuses it with a clear
error naming the key; the process never crashes and the record stays parseable."""

from __future__ import annotations

import math
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import traintel
from traintel.record.reader import Records

keys = st.text(min_size=1, max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=200),
    st.binary(max_size=50),
)
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=20,
)
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _run(tmp_path_factory, recorded, quiet, **options):
    run = traintel.init(
        project="fuzz",
        dir=str(tmp_path_factory.mktemp("fuzz")),
        **quiet,
        max_metric_names=10_000,
        reinit="create_new",
        **options,
    )
    yield run
    run.finish()
    for line in recorded(run.dir):  # every line written under fuzzing parses
        assert line["type"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, recorded, quiet):
    yield from _run(tmp_path_factory, recorded, quiet, strict=True)


@pytest.fixture(scope="module")
def lenient(tmp_path_factory, recorded, quiet):
    """A run as users start it: what it cannot take is refused, never raised."""
    yield from _run(tmp_path_factory, recorded, quiet)


@SETTINGS
@given(values=st.dictionaries(keys, st.one_of(scalars, nested), min_size=1, max_size=8))
def test_log_records_or_refuses_naming_the_key(run, values):
    try:
        run.log(**values)
    except (TypeError, ValueError) as exc:
        assert any(repr(k) in str(exc) for k in values), str(exc)
    else:
        for key, value in values.items():
            assert isinstance(value, (bool, int, float)), (key, value)
            if math.isfinite(value) and key not in ("samples", "tokens"):
                assert run.state.latest[key] == value


@SETTINGS
@given(
    values=st.dictionaries(keys, st.one_of(scalars, nested), min_size=1, max_size=8),
    step=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5)),
)
def test_log_never_raises_in_a_run_and_counts_what_it_refuses(lenient, values, step):
    """The no-raise rule at run.log's door: each key is recorded or refused and counted."""
    refused = sum(lenient.state.refused.values())
    lenient.log(values, step=step)
    kept = [
        key
        for key, value in values.items()
        if key in lenient.state.latest and isinstance(value, (bool, int, float))
    ]
    assert kept or sum(lenient.state.refused.values()) > refused


@SETTINGS
@given(
    name=st.text(max_size=120),
    fields=st.dictionaries(
        st.text(min_size=1, max_size=30).filter(
            lambda k: k.isidentifier() and k not in ("level", "name")
        ),
        nested,
        max_size=6,
    ),
)
def test_event_records_or_refuses(run, name, fields):
    try:
        run.event(name, **fields)
    except ValueError as exc:
        assert repr(name) in str(exc)


@SETTINGS
@given(config=st.dictionaries(st.text(max_size=30), nested, max_size=10))
def test_init_config_records_any_json_like_config(tmp_path, config, quiet):
    with traintel.init(project="fuzz", dir=str(tmp_path), config=config, **quiet) as run:
        pass
    written = orjson.loads((run.dir / "config.json").read_bytes())
    assert set(written["config"]) == {str(k) for k in config}


@SETTINGS
@given(garbage=st.lists(st.binary(max_size=200), max_size=20))
def test_record_reader_skips_what_it_cannot_parse(tmp_path, garbage):
    path = tmp_path / f"events-{os.getpid()}.jsonl"
    good = [orjson.dumps({"ts": 1.0, "type": "step", "step": i}) for i in range(3)]
    path.write_bytes(b"\n".join(good[:1] + garbage + good[1:]) + b"\n")
    parsed = [r for r in Records(path) if r.get("type") == "step"]
    assert [r["step"] for r in parsed][-2:] == [1, 2]
