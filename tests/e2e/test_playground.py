"""GET /playground over plain HTTP: a self-contained page under a strict policy.

The page's behaviour in a browser is tests/e2e/test_playground_browser.py; here,
what any client sees: the policy, no inline script or style, the assets with
their types and ETags, the redirect from /, and none of it in /openapi.json.
"""

from __future__ import annotations

import re

import httpx

from app.api.playground import PLAYGROUND_DIR

STRICT = {"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
          "img-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".svg": "image/svg+xml"}


def test_the_page_has_a_strict_policy_and_nothing_inline(shared_server):
    response = httpx.get(shared_server.url + "/playground")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert {part.strip() for part in csp.split(";")} == STRICT
    assert "unsafe" not in csp and "http" not in csp and "*" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    html = response.text
    assert response.content == (PLAYGROUND_DIR / "index.html").read_bytes()
    # Every script is a file: no inline body, no handler attributes, no inline style.
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert "src=" in attributes and body.strip() == "", attributes
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)
    urls = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert urls and all(not re.match(r"[a-z]+:|//", url) for url in urls), urls


def test_every_control_has_a_label(shared_server):
    html = httpx.get(shared_server.url + "/playground").text
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    controls = re.findall(r'<(?:input|select|textarea)\b[^>]*\bid="([^"]+)"', html)
    assert controls and set(controls) <= labelled
    assert 'aria-live="polite"' in html and 'aria-live="assertive"' in html


def test_assets_are_served_with_their_types_and_etags(shared_server):
    html = httpx.get(shared_server.url + "/playground").text
    linked = set(re.findall(r'(?:src|href)="playground/([^"]+)"', html))
    files = {path.name for path in PLAYGROUND_DIR.iterdir() if path.suffix in TYPES}
    assert linked <= files and {"playground.js", "api.js", "playground.css"} <= files
    for name in sorted(files):
        url = f"{shared_server.url}/playground/{name}"
        response = httpx.get(url)
        assert response.status_code == 200, name
        assert response.headers["content-type"] == TYPES[name[name.rindex("."):]], name
        assert response.content == (PLAYGROUND_DIR / name).read_bytes()
        etag = response.headers["etag"]
        again = httpx.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"", name
        assert again.headers["etag"] == etag
    page = httpx.get(shared_server.url + "/playground")
    again = httpx.get(shared_server.url + "/playground",
                      headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304


def test_scripts_load_only_from_this_origin(shared_server):
    scripts = sorted(path.name for path in PLAYGROUND_DIR.glob("*.js"))
    assert {"playground.js", "api.js", "art.js"} <= set(scripts)
    for name in scripts:
        script = httpx.get(f"{shared_server.url}/playground/{name}").text
        assert "innerHTML" not in script and "eval(" not in script, name
        assert not re.search(r"""["'`](?:https?:)?//""", script), name
        assert "localStorage" not in script, name  # the token stays in this tab


def test_unknown_assets_are_404_in_the_api_format(shared_server):
    for missing in ("nothing.js", "index.html", "..%2F..%2Fapp%2Fconfig.py", "api.js.map"):
        response = httpx.get(f"{shared_server.url}/playground/{missing}")
        assert response.status_code == 404, missing
        assert response.json()["code"] == "not_found"


def test_the_root_redirects_to_the_playground(shared_server):
    response = httpx.get(shared_server.url + "/")
    assert response.status_code in (302, 308)
    assert response.headers["location"] == "/playground"
    assert httpx.get(shared_server.url + "/", follow_redirects=True).url.path == "/playground"


def test_neither_is_in_the_openapi_document(shared_server):
    paths = httpx.get(shared_server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/playground")]
