"""``GET /docs``: the API's OpenAPI document (``/openapi.json``) in Swagger UI, no sign-in.

Nothing comes from a CDN: Swagger UI's files are the ones the ``swagger-ui-py`` package ships
(found on disk without importing it), served from ``/docs/assets/`` by name from a short list.
The page holds no inline script (its start-up script is ``/docs/assets/cic-docs.js``), so its
Content-Security-Policy allows scripts from the gateway itself only. Swagger UI sets element
styles from script, hence ``style-src 'unsafe-inline'``; "Try it out" calls the gateway itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp import web

ASSETS_PREFIX = "/docs/assets"
SWAGGER_FILES = (
    "swagger-ui.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "favicon-32x32.png",
    "favicon-16x16.png",
)
_CONTENT_TYPES = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".png": "image/png",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>CrossLogic Inference Cloud API</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="stylesheet" href="{ASSETS_PREFIX}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS_PREFIX}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"><noscript>The API description is at /openapi.json.</noscript></div>
  <script src="{ASSETS_PREFIX}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PREFIX}/swagger-ui-standalone-preset.js"></script>
  <script src="{ASSETS_PREFIX}/cic-docs.js"></script>
</body>
</html>
""".encode()
_START_SCRIPT = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
    validatorUrl: null
  });
});
"""


def swagger_ui_dir() -> Path:
    """The folder of Swagger UI's files inside the installed ``swagger-ui-py`` package."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _secure(response: web.StreamResponse, csp: bool) -> web.StreamResponse:
    if csp:
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def docs_page(request: web.Request) -> web.StreamResponse:
    response = web.Response(body=_PAGE, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return _secure(response, csp=True)


async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "cic-docs.js":
        response = web.Response(body=_START_SCRIPT, content_type="text/javascript")
        response.headers["Cache-Control"] = "no-cache"
        return _secure(response, csp=False)
    if name not in SWAGGER_FILES:
        raise web.HTTPNotFound()
    path = swagger_ui_dir() / name
    content_type = _CONTENT_TYPES[path.suffix]
    file_response = web.FileResponse(
        path,
        headers={"Content-Type": content_type, "Cache-Control": "public, max-age=86400"},
    )
    return _secure(file_response, csp=False)
