"""Webhooks end to end: the endpoints API, and deliveries by real `run.py relay` processes to
receivers this test runs on 127.0.0.1, verified with the `standardwebhooks` package."""

from __future__ import annotations

import pytest

from app.client import ActionNotAllowedError, Client, InvalidParamsError, NotFoundError
from harness.saypi import Server, server_env

PUBLIC = "https://hooks.public.test/saypi"
RESOLVE = "hooks.public.test=93.184.216.34,internal.test=10.0.0.1"


@pytest.fixture(scope="module")
def guarded(postgres, tmp_path_factory):
    """A server without WEBHOOK_ALLOW_PRIVATE: the SSRF rules hold."""
    tmp = tmp_path_factory.mktemp("guarded")
    server = Server(server_env(postgres.new_database(), tmp, WEBHOOK_RESOLVE=RESOLVE,
                               WEBHOOK_MAX_ENDPOINTS="3"), tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def new_client(server: Server) -> Client:
    client = Client(server.url)
    return client.with_token(client.create_user()["token"])


def test_endpoints_are_created_listed_read_changed_and_deleted(guarded):
    client = new_client(guarded)
    created = client.create_webhook_endpoint(PUBLIC, events=["line.*", "mood.created"],
                                             description="bridge")
    response = client.last_response
    assert response.status_code == 201
    assert response.headers["Location"] == f"/webhook_endpoints/{created['id']}"
    assert created["id"].startswith("we_") and created["secret"].startswith("whsec_")
    assert created["events"] == ["line.*", "mood.created"] and not created["disabled"]
    assert created["disabled_reason"] is None
    read = client.get_webhook_endpoint(created["id"])
    assert "secret" not in read and read == {k: v for k, v in created.items() if k != "secret"}
    second = client.create_webhook_endpoint(PUBLIC)
    assert second["events"] == ["*"] and second["description"] is None
    page = client.list_webhook_endpoints(limit=1)
    assert page.type == "webhook_endpoint" and page.has_more
    assert [e["id"] for e in page.data] == [created["id"]]
    page = client.list_webhook_endpoints(starting_after=created["id"])
    assert [e["id"] for e in page.data] == [second["id"]] and not page.has_more
    with pytest.raises(InvalidParamsError):
        client.list_webhook_endpoints(starting_after="we_0000000000000001")
    changed = client.update_webhook_endpoint(created["id"], disabled=True, description=None,
                                             events=["*"])
    assert changed["disabled"] and changed["description"] is None and changed["events"] == ["*"]
    assert changed["disabled_reason"] is None
    rotated = client.rotate_webhook_secret(created["id"])
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    ping = client.ping_webhook_endpoint(created["id"])
    assert client.last_response.status_code == 202
    assert ping["status"] == "pending" and ping["id"].startswith("wd_")
    deliveries = client.list_webhook_deliveries(created["id"])
    assert deliveries.type == "webhook_delivery" and [d["id"] for d in deliveries.data] == [
        ping["id"]]
    client.delete_webhook_endpoint(created["id"])
    with pytest.raises(NotFoundError):
        client.get_webhook_endpoint(created["id"])
    with pytest.raises(NotFoundError):
        client.list_webhook_deliveries(created["id"])


def test_the_endpoint_limit_is_an_object_limit(guarded):
    client = new_client(guarded)
    for _ in range(3):
        client.create_webhook_endpoint(PUBLIC)
    with pytest.raises(ActionNotAllowedError) as refused:
        client.create_webhook_endpoint(PUBLIC)
    assert refused.value.message == "You may not create more than 3 webhook endpoints."


def test_another_users_endpoint_is_not_found(guarded):
    owner, other = new_client(guarded), new_client(guarded)
    endpoint = owner.create_webhook_endpoint(PUBLIC)["id"]
    calls = [lambda: other.get_webhook_endpoint(endpoint),
             lambda: other.update_webhook_endpoint(endpoint, disabled=True),
             lambda: other.rotate_webhook_secret(endpoint),
             lambda: other.ping_webhook_endpoint(endpoint),
             lambda: other.list_webhook_deliveries(endpoint),
             lambda: other.delete_webhook_endpoint(endpoint)]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()
    assert other.list_webhook_endpoints().data == []
    assert owner.get_webhook_endpoint(endpoint)["disabled"] is False


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://[::1]/hook", "http://169.254.169.254/latest/meta-data",
    "http://internal.test/hook", "http://2130706433/hook", "http://0177.0.0.1/hook",
    "http://0x7f.0.0.1/hook", "http://localhost/hook", "http://[::ffff:127.0.0.1]/hook",
    "http://10.1.2.3/hook", "http://0.0.0.0/hook", "http://224.0.0.1/hook",
    "ftp://hooks.public.test/", "http://user:pw@hooks.public.test/", "hooks.public.test",
])
def test_urls_that_reach_inside_are_refused(guarded, url):
    client = new_client(guarded)
    with pytest.raises(InvalidParamsError) as refused:
        client.create_webhook_endpoint(url)
    assert refused.value.params == {"url"}, refused.value.data
    endpoint = client.create_webhook_endpoint(PUBLIC)["id"]
    with pytest.raises(InvalidParamsError):
        client.update_webhook_endpoint(endpoint, url=url)


def test_event_patterns_are_checked(guarded):
    client = new_client(guarded)
    with pytest.raises(InvalidParamsError) as refused:
        client.create_webhook_endpoint(PUBLIC, events=["line.created", "line.exploded", "x.*"])
    assert refused.value.params == {"events[1]", "events[2]"}
    with pytest.raises(InvalidParamsError):
        client.create_webhook_endpoint(PUBLIC, events=[])
