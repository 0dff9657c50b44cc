"""/openapi.json and /docs as a running SayPI serves them: no authentication, a
self-contained page with a strict CSP, assets from swagger-ui-bundle.
"""

from __future__ import annotations

import re

import httpx
from openapi_spec_validator import validate as validate_spec

from app.openapi.builder import build_spec
from tests.inprocess.test_openapi import CONFIG, DOCUMENTED


# --- served ---------------------------------------------------------------------------
def test_openapi_json_is_served_without_authentication(shared_server):
    response = httpx.get(shared_server.url + "/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert "ratelimit" not in response.headers
    served = response.json()
    validate_spec(served)
    built = build_spec(CONFIG, DOCUMENTED)
    assert served["paths"].keys() == built["paths"].keys()
    assert served["components"]["schemas"] == built["components"]["schemas"]
    again = httpx.get(shared_server.url + "/openapi.json",
                      headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_docs_page_is_self_contained_with_a_strict_csp(shared_server):
    response = httpx.get(shared_server.url + "/docs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http" not in csp and "*" not in csp and "unsafe" not in csp
    html = response.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(not re.match(r"[a-z]+:|//", url) for url in urls), urls
    assert "<script>" not in html  # no inline script: the CSP would refuse it
    for url in urls:
        asset = httpx.get(f"{shared_server.url}/{url}")
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in (
            "text/css", "text/javascript", "image/png"), url


def test_docs_assets_come_from_swagger_ui_bundle(shared_server):
    from swagger_ui_bundle import swagger_ui_path

    response = httpx.get(shared_server.url + "/docs/swagger-ui-bundle.js")
    assert response.content == (swagger_ui_path / "swagger-ui-bundle.js").read_bytes()
    script = httpx.get(shared_server.url + "/docs/saypi-docs.js").text
    assert "validatorUrl: null" in script and "http" not in script
    for missing in ("nothing.js", "index.html", "..%2F..%2Fapp%2Fconfig.py"):
        response = httpx.get(f"{shared_server.url}/docs/{missing}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
