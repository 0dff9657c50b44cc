"""The API's own description: GET /openapi.json and a browsable reference at GET /docs.

/docs is Swagger UI from the `swagger-ui-bundle` package, served by SayPI itself (never a
CDN), under a Content-Security-Policy allowing only its own origin and `data:` images; no
inline script. Everything is read and serialised once, when the app is constructed.
"""

from __future__ import annotations

from flask import Response

from app.http import respond
from app.http.respond import Static
from app.http.routing import Handler

DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; "
            "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

# Relative URLs, so the page also works when SayPI is served under a path prefix.
DOCS_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SayPI API reference</title>
<link rel="icon" type="image/png" sizes="32x32" href="docs/favicon-32x32.png">
<link rel="icon" type="image/png" sizes="16x16" href="docs/favicon-16x16.png">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/saypi-docs.js"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise ask validator.swagger.io for a badge.
DOCS_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate with the ETag every time

# The files of the swagger-ui-bundle package the page uses, with their types.
BUNDLED_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}


def handle_openapi(document: bytes) -> Handler:
    """GET /openapi.json: the OpenAPI 3.0 description of every endpoint but this and /docs.

    `document` is app/openapi/builder.py's spec_json of the routes it describes.
    """
    static = Static(document, respond.JSON_TYPE, NO_CACHE)

    def handler() -> Response:
        return static.response()

    return handler


def handle_docs() -> Handler:
    """GET /docs: a browsable API reference (Swagger UI), with no CDN."""
    static = Static(DOCS_HTML.encode(), "text/html; charset=utf-8",
                    {**NO_CACHE, "Content-Security-Policy": DOCS_CSP})

    def handler() -> Response:
        return static.response()

    return handler


def handle_docs_asset() -> Handler:
    """GET /docs/{asset}: the page's script, and Swagger UI's files from swagger-ui-bundle."""
    from swagger_ui_bundle import swagger_ui_path

    assets = {name: Static((swagger_ui_path / name).read_bytes(), content_type,
                           {"Cache-Control": "public, max-age=86400"})
              for name, content_type in BUNDLED_ASSETS.items()}
    assets["saypi-docs.js"] = Static(DOCS_JS.encode(), "text/javascript; charset=utf-8",
                                     NO_CACHE)

    return respond.serve_named(assets)
