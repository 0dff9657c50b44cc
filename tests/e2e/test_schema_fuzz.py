"""Schema-driven fuzzing: schemathesis against a live SayPI, from the spec it serves.

Every operation of /openapi.json gets generated valid and invalid requests
(the spec's examples, boundary "coverage" cases and random fuzzing), sent with
a fresh user's bearer token; then stateful sequences follow the spec's OpenAPI
links (create, then read, change, delete). Every response must be documented:
no 5xx, and a documented status, content type, headers and body.

SAYPI_FUZZ_EXAMPLES sets the random examples per operation and scales the
stateful run; the default keeps the suite's budget, `make fuzz` runs 500.
Rate limits stay off (the test servers' default), so every request is judged
on its content. A summary of what ran goes to test-artifacts/schema-fuzz.json.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from app.domain.models import BUILTIN_MOODS
from harness import ROOT

EXAMPLES = int(os.environ.get("SAYPI_FUZZ_EXAMPLES", "8"))
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.timeout(300 + 10 * EXAMPLES)  # `make fuzz` runs far longer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, ignored_auth]
STATEFUL_CHECKS = [*CHECKS, use_after_free]

# Operations that can only succeed on ids a link supplied (random ids are 404).
LINK_TARGETS = {
    "GET /conversations/{conversation_id}", "PATCH /conversations/{conversation_id}",
    "DELETE /conversations/{conversation_id}", "GET /conversations/{conversation_id}/lines",
    "POST /conversations/{conversation_id}/lines",
    "POST /conversations/{conversation_id}/lines/batch",
    "GET /conversations/{conversation_id}/lines/{line_id}",
    "DELETE /conversations/{conversation_id}/lines/{line_id}", "DELETE /moods/{name}",
    "GET /webhook_endpoints/{endpoint_id}", "GET /webhook_endpoints/{endpoint_id}/deliveries",
}
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def label_of(case) -> str:
    return f"{case.operation.method.upper()} {case.operation.path}"


def fresh_idempotency_key(case) -> None:
    """Give a valid generated Idempotency-Key a unique suffix.

    Generators reuse values (the spec's example, coverage's boundary values), and
    a reused key with other parameters is a correct but uninformative `422`, so
    most POSTs would never run. The spec's own examples keep their key, so
    replays and 422 are still exercised.
    """
    key = (case.headers or {}).get("Idempotency-Key")
    if key is None or not _VALID_KEY.fullmatch(key):
        return
    if case.meta is not None and case.meta.phase.name == TestPhase.EXAMPLES:
        return
    case.headers["Idempotency-Key"] = f"{key[:200]}~{uuid.uuid4().hex}"


class Tally:
    """What the fuzzer sent: cases per operation and phase, and the statuses they got."""

    def __init__(self) -> None:
        self.cases: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.steps: Counter[str] = Counter()
        self.step_successes: Counter[str] = Counter()

    def record(self, case, response) -> None:
        self.cases[label_of(case)] += 1
        if case.meta is not None:
            self.phases[f"{case.meta.phase.name}/{case.meta.generation.mode}"] += 1
        self.statuses[f"{label_of(case)} -> {response.status_code}"] += 1

    def record_step(self, case, response) -> None:
        self.steps[label_of(case)] += 1
        if response.status_code < 300:
            self.step_successes[label_of(case)] += 1

    def summary(self) -> dict:
        return {"examples_per_operation": EXAMPLES,
                "operations": len(self.cases),
                "cases": sum(self.cases.values()),
                "stateful_steps": sum(self.steps.values()),
                "cases_by_phase_and_mode": dict(sorted(self.phases.items())),
                "cases_by_operation": dict(sorted(self.cases.items())),
                "statuses": dict(sorted(self.statuses.items())),
                "stateful_steps_by_operation": dict(sorted(self.steps.items())),
                "stateful_successes_by_operation": dict(sorted(self.step_successes.items()))}


@pytest.fixture(scope="module")
def tally(request) -> Iterator[Tally]:
    counts = Tally()
    yield counts
    summary = counts.summary()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schema-fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nschemathesis: {summary['operations']} operations, {summary['cases']} "
                f"cases, {summary['stateful_steps']} stateful steps "
                f"(SAYPI_FUZZ_EXAMPLES={EXAMPLES}); details in test-artifacts/schema-fuzz.json")


@pytest.fixture(scope="module")
def fuzz_user(shared_server) -> dict:
    """A fresh user, and a conversation of theirs: the fuzzer acts as one ordinary user."""
    response = httpx.post(shared_server.url + "/users", json={"name": "Fuzzer"})
    assert response.status_code == 201, response.text
    user = response.json()
    convo = httpx.post(shared_server.url + "/conversations", json={"heading": "Fuzzed"},
                       headers={"Authorization": f"Bearer {user['token']}"})
    assert convo.status_code == 201, convo.text
    return {**user, "conversation_id": convo.json()["id"]}


def _pinned(path: str, methods: list[str], **parameters: str) -> list[dict]:
    """Fixed path parameters for some operations (a name filter selects exactly one)."""
    return [{"include-name": f"{method} {path}", "parameters": parameters}
            for method in methods]


def load_schema(server, fuzz_user: dict, operations: list[dict]):
    # Random strings are hardly ever an animal or a mood, so most lines would be 400:
    # these names are drawn often instead.
    animals = httpx.get(server.url + "/animals",
                        headers={"Authorization": f"Bearer {fuzz_user['token']}"}).json()
    moods = [mood.name for mood in BUILTIN_MOODS]
    config = schemathesis.Config.from_dict({
        "base-url": server.url,
        "auth": {"openapi": {"bearerAuth": {"bearer": fuzz_user["token"]}}},
        "dictionaries": {"animals": {"values": animals["animals"]},
                         "moods": {"values": [*moods, *(m.upper() for m in moods)]}},
        "parameters": {"body.animal": {"dictionary": "animals", "probability": 0.7},
                       "body.mood": {"dictionary": "moods", "probability": 0.7}},
        "generation": {"mode": "all", "max-examples": EXAMPLES},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "request-timeout": 30,
        # A stream answers for STREAM_DIRECT_SECONDS: tests/e2e/test_streams.py covers it.
        "operations": [*operations, {"include-path": "/events/stream", "enabled": False}],
    })
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def api_schema(shared_server, fuzz_user):
    # Random ids only ever find nothing (404), so some operations get the fuzzer's
    # own user and conversation. Their DELETEs get ids that are never anyone's:
    # schemathesis reuses ids it saw in responses, and deleting the fuzzer would
    # leave nothing but 401s to test.
    own_user, own_convo = fuzz_user["id"], fuzz_user["conversation_id"]
    return load_schema(shared_server, fuzz_user, [
        *_pinned("/users/{user_id}", ["GET", "PATCH"], user_id=own_user),
        *_pinned("/users/{user_id}", ["DELETE"], user_id="usr_0000000000000000"),
        *_pinned("/conversations/{conversation_id}", ["GET", "PATCH"],
                 conversation_id=own_convo),
        *_pinned("/conversations/{conversation_id}", ["DELETE"],
                 conversation_id="cv_0000000000000000"),
        *_pinned("/conversations/{conversation_id}/lines", ["GET", "POST"],
                 conversation_id=own_convo),
        *_pinned("/conversations/{conversation_id}/lines/batch", ["POST"],
                 conversation_id=own_convo),
    ])


@pytest.fixture(scope="module")
def linked_schema(shared_server, fuzz_user):
    """Nothing pinned but the fuzzer's own user: every other id must come through a link."""
    return load_schema(shared_server, fuzz_user, [
        *_pinned("/users/{user_id}", ["DELETE"], user_id="usr_0000000000000000")])


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis renames subtests through `node._nodeid`, which pytest 9 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_every_operation_answers_as_documented(case, tally):
    fresh_idempotency_key(case)
    response = case.call()
    tally.record(case, response)
    case.validate_response(response, checks=CHECKS)


def test_stateful_sequences_follow_links(linked_schema, tally):
    """Create, then read, change and delete what was created, through the spec's links."""
    failures: list[str] = []

    class Sequences(linked_schema.as_state_machine()):
        def before_call(self, case):
            fresh_idempotency_key(case)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            tally.record_step(case, response)
            try:
                case.validate_response(response, checks=STATEFUL_CHECKS,
                                       transport_kwargs=kwargs or None, recorder=self.recorder)
            except Exception as exc:
                failures.append(str(exc))
                raise

    for _ in range(3):
        try:
            Sequences.run(settings=settings(
                max_examples=max(10, EXAMPLES * 2), stateful_step_count=10, deadline=None,
                suppress_health_check=list(HealthCheck), database=None))
            break
        except Flaky:
            # A sequence depends on the live server's state, so Hypothesis cannot always
            # replay one exactly, and stops. As in schemathesis's own runner, only a failed
            # check counts; the run starts again.
            if failures:
                break
    assert not failures, failures[0]
    followed = {label for label in tally.step_successes if label in LINK_TARGETS}
    assert followed, f"no link was followed to a success: {dict(tally.steps)}"


# Inputs the generators rarely or never make (a NUL reaches PostgreSQL only through
# a name or cursor; a JSON escape can carry an unpaired surrogate, which UTF-8 cannot
# encode). Each of them once answered 500.
HAND_PICKED = [
    ("GET", "/moods", {"query": {"starting_after": "a\x00b"}}, 400),
    ("GET", "/moods", {"query": {"ending_before": "\x00"}}, 400),
    ("GET", "/moods/{name}", {"path_parameters": {"name": "a\x00b"}}, 404),
    ("DELETE", "/moods/{name}", {"path_parameters": {"name": "\x00"}}, 404),
    ("POST", "/users", {"body": {"name": "\udfff"}}, 400),
    ("PATCH", "/users/{user_id}", {"body": {"email": "a\ud800@b.cd"}}, 400),
    ("POST", "/conversations", {"body": {"heading": "\ud800"}}, 400),
    ("POST", "/conversations/{conversation_id}/lines", {"body": {"text": "Moo \ud83d"}}, 400),
    ("POST", "/conversations/{conversation_id}/lines/batch",
     {"body": {"lines": [{"text": "Moo"}, {"mood": "a\udc00"}]}}, 400),
    ("POST", "/conversations", {"body": {"heading": "h", "lines": [{"animal": "\ud800"}]}}, 400),
    ("POST", "/render", {"body": {"text": "\udfff"}}, 400),
]


@pytest.mark.parametrize(("method", "path", "parts", "status"), HAND_PICKED,
                         ids=[f"{m} {p} {sorted(parts)[0]}" for m, p, parts, _ in HAND_PICKED])
def test_hand_picked_inputs_answer_as_documented(api_schema, fuzz_user, method, path, parts,
                                                  status):
    own = {"user_id": fuzz_user["id"], "conversation_id": fuzz_user["conversation_id"]}
    operation = api_schema[path][method]
    path_parameters = {name: own[name] for name in ("user_id", "conversation_id")
                       if "{" + name + "}" in path}
    path_parameters.update(parts.get("path_parameters", {}))
    case = operation.Case(path_parameters=path_parameters, query=parts.get("query"),
                          headers={"Authorization": f"Bearer {fuzz_user['token']}"},
                          **({"body": parts["body"], "media_type": "application/json"}
                             if "body" in parts else {}))
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == status, response.text



@pytest.mark.parametrize("path", ["/animals", "/moods", "/conversations",
                                  "/conversations/{conversation_id}",
                                  "/conversations/{conversation_id}/lines"])
def test_conditional_gets_answer_304_as_documented(api_schema, fuzz_user, path):
    """Generators never send a current ETag back, so the 304 branch is checked here."""
    operation = api_schema[path]["GET"]
    path_parameters = {"conversation_id": fuzz_user["conversation_id"]} if "{" in path else {}
    auth = {"Authorization": f"Bearer {fuzz_user['token']}"}
    first = operation.Case(path_parameters=path_parameters, headers=auth).call()
    assert first.status_code == 200
    case = operation.Case(path_parameters=path_parameters,
                          headers={**auth, "If-None-Match": first.headers["etag"][0]})
    response = case.call()
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == 304 and response.content == b""
