"""/docs in a real browser: headless Chromium, driven by Playwright, against a live SayPI.

The page must render every operation of the contract from SayPI's own files,
ask no other host for anything, and break none of its Content-Security-Policy.
A screenshot is saved to test-artifacts/ for people to look at.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import ROOT
from tests.inprocess.test_openapi import CONTRACT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "test-artifacts" / "docs.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"the system Chromium ({CHROMIUM}) is not installed"),
]

@contextlib.contextmanager
def chromium():
    """The system's headless Chromium, driven by Playwright, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Collected in the page before any of its scripts run.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def test_docs_render_every_operation_from_this_origin_only(shared_server):
    origin = urlsplit(shared_server.url).netloc
    requested: list[str] = []
    elsewhere: list[str] = []
    console_errors: list[str] = []

    def on_route(route):
        url = route.request.url
        requested.append(url)
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") \
                and urlsplit(url).netloc != origin:
            elsewhere.append(url)
            route.abort()  # never reach the outside world, but remember the attempt
        else:
            route.continue_()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.add_init_script(RECORD_CSP_VIOLATIONS)
        page.route("**/*", on_route)
        page.on("console", lambda message: console_errors.append(message.text)
                if message.type == "error" else None)
        response = page.goto(shared_server.url + "/docs")
        assert response is not None and response.status == 200
        page.wait_for_selector(".opblock .opblock-summary-path", timeout=30_000)
        page.wait_for_load_state("networkidle")
        rendered = page.eval_on_selector_all(
            ".opblock",
            """blocks => blocks.map(b => [
                 b.querySelector('.opblock-summary-method').textContent.trim(),
                 b.querySelector('.opblock-summary-path').getAttribute('data-path')])""")
        title = page.text_content(".information-container .title")
        violations = page.evaluate("window.__cspViolations")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    assert {(method, path) for method, path in rendered} == CONTRACT
    assert len(rendered) == len(CONTRACT)
    assert title is not None and "SayPI" in title
    assert elsewhere == [], f"the page asked other hosts: {elsewhere}"
    assert any(url.endswith("/openapi.json") for url in requested)
    assert any(url.endswith("/docs/swagger-ui-bundle.js") for url in requested)
    assert violations == [], f"Content-Security-Policy violations: {violations}"
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    assert SCREENSHOT.stat().st_size > 10_000
