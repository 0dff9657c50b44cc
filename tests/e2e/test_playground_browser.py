"""/playground in a real browser: headless Chromium, driven by Playwright, against a live SayPI.

One person's whole visit, by the page's own controls: create a user, a
conversation, preview lines (POST /render), say and think them in a mood of
their own, watch a second tab (the same user, at phone width) see new lines
through its conditional refresh, page back through older conversations,
delete a line, rename and delete the conversation, and forget the user, whose
token the API then refuses. Throughout: no console error, no
Content-Security-Policy violation, no request to another host, and the token
in no URL. Screenshots (1280 and 375 px wide) go to test-artifacts/.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import httpx
import pytest

from harness import ROOT
from tests.e2e.test_docs_browser import CHROMIUM, RECORD_CSP_VIOLATIONS, chromium

ARTIFACTS = ROOT / "test-artifacts"
SESSION_KEY = "saypi.playground.session"
REFRESH_WAIT_MS = 10_000  # the page refreshes every 2 s; allow a few periods on a busy machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"the system Chromium ({CHROMIUM}) is not installed"),
]


class Watch:
    """What a browser context did: every URL it asked for, console errors, responses."""

    def __init__(self, origin: str):
        self.origin = origin
        self.requested: list[str] = []
        self.elsewhere: list[str] = []
        self.console_errors: list[str] = []
        self.statuses: list[tuple[str, str, int]] = []

    def attach(self, context) -> None:
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        context.route("**/*", self.on_route)
        context.on("page", self.on_page)

    def on_page(self, page) -> None:
        page.on("console", lambda message: self.console_errors.append(message.text)
                if message.type == "error" else None)
        page.on("pageerror", lambda error: self.console_errors.append(str(error)))
        page.on("response", lambda response: self.statuses.append(
            (response.request.method, urlsplit(response.url).path, response.status)))

    def on_route(self, route) -> None:
        url = route.request.url
        self.requested.append(url)
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != self.origin:
            self.elsewhere.append(url)
            route.abort()  # never reach the outside world, but remember the attempt
        else:
            route.continue_()


# The width of each wide character of a <pre>, in cells (the width of its first character).
CELLS_OF_WIDE = """pre => {
  const range = document.createRange();
  range.setStart(pre.firstChild, 0);
  range.setEnd(pre.firstChild, 1);
  const cell = range.getBoundingClientRect().width;
  return [...pre.querySelectorAll('.wide')].map(
    span => Math.round(span.getBoundingClientRect().width / cell * 100) / 100);
}"""


def lines_of(page) -> list[str]:
    """The art of every line the page shows, exactly as its <pre> holds it."""
    return page.eval_on_selector_all("#lines pre.art", "nodes => nodes.map(n => n.textContent)")


def wait_for_lines(page, count: int, timeout: float = REFRESH_WAIT_MS) -> None:
    page.wait_for_function("n => document.querySelectorAll('#lines li.line').length === n",
                           arg=count, timeout=timeout)


def wait_for_the_catch_up_read(page, watch: Watch, path: str) -> None:
    """Wait until the page has asked for `path` after its last stream request: the one read a
    page makes when its stream opens (what changed before), so any later read is a poll."""
    deadline = time.monotonic() + 10
    while True:
        asked = [urlsplit(url).path for url in watch.requested]
        streams = [n for n, asked_for in enumerate(asked) if asked_for == "/events/stream"]
        if streams and path in asked[streams[-1] + 1:]:
            return
        assert time.monotonic() < deadline, asked
        page.wait_for_timeout(50)  # lets the browser's request events reach the watch


def wait_for_preview(page, text: str) -> None:
    # A function, not a string: the page's CSP refuses eval, which a string would need.
    page.wait_for_function("t => document.getElementById('preview').textContent.includes(t)",
                           arg=text, timeout=5_000)


def sign_in(context, session: dict) -> None:
    """Put a session into the context's sessionStorage before any page script runs.

    Init scripts also run in the blank document a new page starts with, which
    has no storage: only documents served over HTTP get the session.
    """
    context.add_init_script(f"if (location.protocol === 'http:') sessionStorage.setItem("
                            f"{json.dumps(SESSION_KEY)}, {json.dumps(json.dumps(session))})")


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_whole_visit_through_the_playground(shared_server):
    from playwright.sync_api import expect

    base = shared_server.url
    watch = Watch(urlsplit(base).netloc)
    ARTIFACTS.mkdir(exist_ok=True)

    with chromium() as browser:
        desktop = browser.new_context(viewport={"width": 1280, "height": 900})
        watch.attach(desktop)
        page = desktop.new_page()
        response = page.goto(base + "/")  # the root redirects to the playground
        assert response is not None and response.status == 200
        assert urlsplit(page.url).path == "/playground"
        expect(page.locator("#signin")).to_be_visible()

        # Keyboard alone: Tab to the name field (focus visible), type, Enter submits.
        for _ in range(6):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "user-name":
                break
        assert page.evaluate("document.activeElement.id") == "user-name"
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") \
            != "none"
        page.keyboard.type("Ada")
        page.keyboard.press("Enter")
        expect(page.locator("#session")).to_be_visible()
        session = json.loads(page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')"))
        token, user_id = session["token"], session["id"]
        assert user_id.startswith("usr_") and token
        auth = {"Authorization": f"Bearer {token}"}
        expect(page.locator("#session-user")).to_contain_text("Ada")

        page.fill("#new-heading", "Hello cows")
        page.click("text=Create conversation")
        expect(page.locator("#conversation-title")).to_have_text("Hello cows")
        listed = httpx.get(base + "/conversations", headers=auth).json()["data"]
        assert [c["heading"] for c in listed] == ["Hello cows"]
        conversation_id = listed[0]["id"]
        expect(page.locator("#no-lines")).to_be_visible()

        # Animals and moods come from the API.
        animals = httpx.get(base + "/animals", headers=auth).json()["animals"]
        options = page.eval_on_selector_all("#animal option", "os => os.map(o => o.value)")
        assert options == animals
        moods = page.eval_on_selector_all("#mood option", "os => os.map(o => o.value)")
        assert moods[:8] == ["default", "borg", "dead", "greedy", "stoned", "tired",
                             "wired", "young"]
        animal = next((a for a in animals if a != "default"), "default")

        # A live preview of what the line will look like, wide characters included.
        page.select_option("#animal", animal)
        page.select_option("#mood", "dead")
        page.fill("#text", "Moo, 世界 🐄")
        wait_for_preview(page, "Moo, 世界 🐄")
        preview = page.text_content("#preview")
        rendered = httpx.post(base + "/render", headers=auth, json={
            "text": "Moo, 世界 🐄", "animal": animal, "mood": "dead"}).json()["output"]
        assert preview == rendered

        page.click("#add-line")  # say it
        wait_for_lines(page, 1, timeout=5_000)
        line = httpx.get(f"{base}/conversations/{conversation_id}", headers=auth) \
            .json()["lines"][0]
        assert (line["animal"], line["mood"], line["think"]) == (animal, "dead", False)
        assert lines_of(page) == [line["output"]] == [preview]
        assert page.input_value("#text") == ""
        # Each wide character (世, 界, 🐄) is drawn two cells wide, so the balloon aligns.
        assert page.eval_on_selector("#lines pre.art", CELLS_OF_WIDE) == [2.0, 2.0, 2.0]

        # A mood of one's own, then a thought in it.
        page.click("#mood-details summary")
        page.fill("#mood-name", "Sly")
        page.fill("#mood-eyes", "^^")
        page.click("text=Save mood")
        expect(page.locator("#status")).to_contain_text("Created mood Sly")
        assert page.input_value("#mood") == "Sly"
        page.check("#think")
        expect(page.locator("#add-line")).to_have_text("Think it")
        page.fill("#text", "Hmm")
        wait_for_preview(page, "( Hmm )")
        assert "^^" in page.text_content("#preview")
        page.click("#add-line")
        wait_for_lines(page, 2, timeout=5_000)
        thought = httpx.get(f"{base}/conversations/{conversation_id}", headers=auth) \
            .json()["lines"][1]
        assert (thought["mood"], thought["think"], thought["text"]) == ("Sly", True, "Hmm")
        assert lines_of(page)[1] == thought["output"]
        page.uncheck("#think")

        # Eleven more conversations, made elsewhere: the list pages back from the newest.
        for n in range(1, 12):
            assert httpx.post(base + "/conversations", headers=auth,
                              json={"heading": f"Extra {n}"}).status_code == 201

        # A second tab of the same user, at phone width: the token goes into its
        # sessionStorage before the page runs, never into a URL.
        phone = browser.new_context(viewport={"width": 375, "height": 800},
                                    is_mobile=True, has_touch=True)
        watch.attach(phone)
        sign_in(phone, session)
        other = phone.new_page()
        other.goto(base + "/playground")
        headings = other.locator("#conversation-list button")
        expect(headings).to_have_count(10)
        assert headings.all_text_contents() == [f"Extra {n}" for n in range(11, 1, -1)]
        expect(other.locator("#older")).to_be_visible()
        other.click("#older")
        expect(headings).to_have_count(12)
        assert headings.all_text_contents()[10:] == ["Extra 1", "Hello cows"]
        expect(other.locator("#older")).to_be_hidden()
        other.click("#conversation-list button >> text=Hello cows")
        wait_for_lines(other, 2, timeout=5_000)
        assert lines_of(other) == lines_of(page)

        # Each tab sees the other's new line within a few refresh periods.
        page.fill("#text", "From the desk")
        page.click("#add-line")
        wait_for_lines(page, 3, timeout=5_000)
        wait_for_lines(other, 3)
        other.fill("#text", "From the phone")
        other.click("#add-line")
        wait_for_lines(other, 4, timeout=5_000)
        wait_for_lines(page, 4)
        assert lines_of(page) == lines_of(other)
        assert "From the phone" in lines_of(page)[3]

        assert no_horizontal_scroll(other), "the phone layout scrolls sideways"
        other.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
        phone_violations = other.evaluate("window.__cspViolations")
        phone.close()

        # Unchanged, the conversation costs a 304 on each refresh.
        conversation_path = f"/conversations/{conversation_id}"
        page.wait_for_timeout(4_500)
        polls = [status for method, path, status in watch.statuses
                 if method == "GET" and path == conversation_path]
        assert 304 in polls and set(polls) <= {200, 304}, polls

        # Delete a line.
        page.click("#lines li.line >> nth=0 >> text=Delete line")
        wait_for_lines(page, 3, timeout=5_000)
        remaining = httpx.get(base + conversation_path, headers=auth).json()["lines"]
        assert [ln["text"] for ln in remaining] == ["Hmm", "From the desk", "From the phone"]

        # Rename.
        page.fill("#rename-heading", "Renamed cows")
        page.click("text=Rename")
        expect(page.locator("#conversation-title")).to_have_text("Renamed cows")
        expect(page.locator("#conversation-list button[aria-current=true]")) \
            .to_have_text("Renamed cows")
        assert httpx.get(base + conversation_path, headers=auth).json()["heading"] == \
            "Renamed cows"
        assert no_horizontal_scroll(page)
        page.screenshot(path=str(ARTIFACTS / "playground-desktop.png"), full_page=True)
        page.set_viewport_size({"width": 375, "height": 800})
        assert no_horizontal_scroll(page), "the page scrolls sideways at 375 px"
        page.set_viewport_size({"width": 1280, "height": 900})

        # Delete the conversation.
        page.click("#delete-conversation")
        expect(page.locator("#conversation")).to_be_hidden()
        expect(page.locator("#status")).to_contain_text("Deleted conversation")
        assert httpx.get(base + conversation_path, headers=auth).status_code == 404

        # Forget me: the user is deleted, the tab forgets the token, the API refuses it.
        page.click("#forget")
        expect(page.locator("#signin")).to_be_visible()
        expect(page.locator("#status")).to_contain_text(f"Deleted user {user_id}")
        assert page.evaluate(f"sessionStorage.getItem('{SESSION_KEY}')") is None
        refused = httpx.get(f"{base}/users/{user_id}", headers=auth)
        assert refused.status_code == 401 and refused.json()["code"] == "auth_invalid"
        violations = page.evaluate("window.__cspViolations") + phone_violations

    assert watch.elsewhere == [], f"the page asked other hosts: {watch.elsewhere}"
    # The token (and its secret part alone: its first part is the public user id) in no URL.
    assert not [url for url in watch.requested if token in url or token.split(".")[-1] in url]
    assert violations == [], f"Content-Security-Policy violations: {violations}"
    assert watch.console_errors == [], watch.console_errors
    assert any(urlsplit(url).path == "/render" for url in watch.requested)
    for name in ("playground-desktop.png", "playground-phone.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name


def test_api_errors_show_the_api_message_and_the_wait(start_server):
    """A refusal shows the API's own message; a rate-limit refusal the wait, from Retry-After."""
    from playwright.sync_api import expect

    server = start_server(RATE_LIMIT_USER_PER_MINUTE="1", RATE_LIMIT_USER_BURST="1")
    created = httpx.post(server.url + "/users", json={"name": "Bo"}).json()
    session = {"id": created["id"], "token": created["token"], "name": "Bo"}
    watch = Watch(urlsplit(server.url).netloc)
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        watch.attach(context)
        sign_in(context, session)
        page = context.new_page()
        page.goto(server.url + "/playground")
        # Loading spends the burst; the page says what the API said, and how long to wait.
        error = page.locator("#error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("Too many requests; retry after")
        text = error.text_content()
        assert "Wait " in text and " s before trying again." in text
        wait = int(text.split("Wait ")[1].split(" s")[0])
        assert 1 <= wait <= 60
        violations = page.evaluate("window.__cspViolations")
    assert violations == []
    assert watch.elsewhere == []
    assert all(created["token"].split(".")[-1] not in url for url in watch.requested)


def test_a_line_written_in_one_context_appears_live_in_another(start_server):
    """Two browser contexts of one user on one conversation: the second shows the first's
    new line from the event stream, within a second, with no conditional GET in between."""
    from playwright.sync_api import expect

    server = start_server(STREAM_POLL_SECONDS="0.1", STREAM_DIRECT_SECONDS="60")
    base = server.url
    user = httpx.post(base + "/users", json={"name": "Live"}).json()
    auth = {"Authorization": f"Bearer {user['token']}"}
    convo = httpx.post(base + "/conversations", headers=auth, json={"heading": "Live cows"}
                       ).json()
    session = {"id": user["id"], "name": user["name"], "token": user["token"]}
    watches = [Watch(urlsplit(base).netloc), Watch(urlsplit(base).netloc)]
    with chromium() as browser:
        pages = []
        for watch in watches:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            watch.attach(context)
            sign_in(context, session)
            page = context.new_page()
            page.goto(base + "/playground")
            page.click("#conversation-list button >> text=Live cows")
            expect(page.locator("#conversation")).to_have_attribute("data-live", "stream",
                                                                     timeout=10_000)
            pages.append(page)
        writer, reader = pages
        conversation_path = f"/conversations/{convo['id']}"
        wait_for_the_catch_up_read(reader, watches[1], conversation_path)
        before = len(watches[1].requested)
        writer.fill("#text", "Moo, live")
        writer.click("#add-line")
        wait_for_lines(writer, 1, timeout=5_000)
        wait_for_lines(reader, 1, timeout=1_000)  # from the stream: no refresh period
        asked = [urlsplit(url).path for url in watches[1].requested[before:]]
        assert conversation_path not in asked, asked
        assert lines_of(reader) == lines_of(writer)
        assert "Moo, live" in lines_of(reader)[0]
        # A rename in one shows in the other the same way.
        httpx.patch(base + conversation_path, headers=auth, json={"heading": "Renamed"})
        expect(reader.locator("#conversation-title")).to_have_text("Renamed", timeout=2_000)
        for watch in watches:
            assert not watch.console_errors, watch.console_errors
            assert not watch.elsewhere
            assert not any(user["token"] in url for url in watch.requested)
