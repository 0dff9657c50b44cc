"""Unit tests where tracing's logic is dense: W3C header parsing, statement names, settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import Config, ConfigError
from app.http.trace_context import (
    TraceParent,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)
from app.ops.traced_sql import statement_name
from app.ops.tracing import resource_for, sampler_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


# --- traceparent -------------------------------------------------------------------------------
def test_a_valid_traceparent():
    parent = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert parent == TraceParent(int(TRACE, 16), int(SPAN, 16), 1) and parent.sampled
    assert not parse_traceparent(f"00-{TRACE}-{SPAN}-00").sampled
    assert format_traceparent(parent.trace_id, parent.span_id, parent.flags) == \
        f"00-{TRACE}-{SPAN}-01"


def test_a_later_version_may_carry_more_fields():
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-more-fields") is not None
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") is not None
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01more") is None


@pytest.mark.parametrize("value", [
    None, "", "00", f"00-{TRACE}-{SPAN}", f"00-{TRACE}-{SPAN}-1",
    f"00-{TRACE.upper()}-{SPAN}-01",            # upper-case hex
    f"00-{'0' * 32}-{SPAN}-01",                 # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                # all-zero parent id
    f"ff-{TRACE}-{SPAN}-01",                    # version ff is invalid
    f"00-{TRACE}-{SPAN}-01-extra",              # version 00 has exactly four fields
    f"0g-{TRACE}-{SPAN}-01", f"00-{TRACE[:-1]}x-{SPAN}-01", f"00_{TRACE}_{SPAN}_01",
    f"00-{TRACE}-{SPAN}-01\n", f"00-{TRACE}-{SPAN}-0\u0661", "00-" + "1" * 5000,
])
def test_malformed_traceparents_are_absent(value):
    assert parse_traceparent(value) is None


@given(st.text(max_size=80))
def test_traceparent_parsing_never_raises(text):
    parent = parse_traceparent(text)
    if parent is not None:
        assert parent.trace_id and parent.span_id and 0 <= parent.flags <= 255


# --- tracestate ---------------------------------------------------------------------------------
def test_a_valid_tracestate_keeps_its_order():
    assert parse_tracestate("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,tenant@vendor=x") == (
        ("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE"), ("tenant@vendor", "x"))


@pytest.mark.parametrize("value", [
    None, "", "novalue", "=value", "Upper=1", "a=1,a=2", "a=\x00", "a=x\n", "a=b,c",
    "a=" + "x" * 257, "a=1," * 33, "a=" + "x" * 250 + ",b=" + "y" * 250 + ",c=" + "z" * 20,
    "a=ok,b=bad\tvalue", "a=\u00e9",
])
def test_hostile_or_malformed_tracestates_are_dropped_whole(value):
    assert parse_tracestate(value) == ()


@given(st.text(max_size=600))
def test_tracestate_parsing_never_raises(text):
    for key, value in parse_tracestate(text):
        assert key and value and "," not in value and "=" not in value


# --- statement names ----------------------------------------------------------------------------
@pytest.mark.parametrize(("sql", "name"), [
    ("SELECT c.rid FROM conversations c LEFT JOIN lines l ON true WHERE c.rid = %s",
     ("SELECT conversations", "SELECT")),
    ("  -- a comment\n select 1", ("SELECT", "SELECT")),
    ("INSERT INTO lines (rid) VALUES (%s)", ("INSERT lines", "INSERT")),
    ("UPDATE users SET name = %s", ("UPDATE users", "UPDATE")),
    ("DELETE FROM moods WHERE id = %s", ("DELETE moods", "DELETE")),
    ("WITH owner AS (UPDATE users SET n = n + 1 RETURNING id) INSERT INTO conversations "
     "SELECT 1 FROM owner", ("UPDATE users", "UPDATE")),
    ("WITH x AS (SELECT 1) SELECT * FROM x", ("SELECT x", "SELECT")),
    ("", ("ping", "")),
    ("LISTEN users_deleted", ("LISTEN", "LISTEN")),
    ("(SELECT 1)", ("SQL", "")),
])
def test_statement_names(sql, name):
    assert statement_name(sql) == name


# --- settings -----------------------------------------------------------------------------------
def test_tracing_settings_parse_and_validate():
    config = Config.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=cows%20and%20owls",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Basic%20abc",
        "OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, [])
    assert config.otel_exporter_otlp_endpoint == "http://collector:4318"
    assert config.otel_resource_attributes == (("deployment.environment", "prod"),
                                               ("team", "cows and owls"))
    assert config.otel_exporter_otlp_headers == (("authorization", "Basic abc"),)
    assert config.otel_traces_sampler == "traceidratio"
    assert Config.from_env({}, []).otel_exporter_otlp_endpoint is None

    with pytest.raises(ConfigError) as caught:
        Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
                         "OTEL_TRACES_SAMPLER": "sometimes", "OTEL_TRACES_SAMPLER_ARG": "2",
                         "OTEL_RESOURCE_ATTRIBUTES": "novalue", "OTEL_SERVICE_NAME": " ",
                         "OTEL_BSP_MAX_QUEUE_SIZE": "10"}, [])
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"]


def test_samplers_and_resource():
    assert "ParentBased" in sampler_for("parentbased_traceidratio", 0.5).get_description()
    assert "0.5" in sampler_for("parentbased_traceidratio", 0.5).get_description()
    assert sampler_for("always_off", 1.0).get_description() == "AlwaysOffSampler"
    assert sampler_for("traceidratio", 0.1).get_description().startswith("TraceIdRatioBased")
    resource = resource_for("saypi-eu", (("service.name", "ignored"), ("team", "x")), "1.2")
    assert resource.attributes["service.name"] == "saypi-eu"  # OTEL_SERVICE_NAME wins
    assert resource.attributes["team"] == "x"
    assert resource.attributes["service.version"] == "1.2"
