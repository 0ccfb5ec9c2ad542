"""The API's documentation page, `/docs`: Swagger UI over `/openapi.json`, served whole from the
swagger-ui-bundle package (no CDN), under a Content-Security-Policy that allows only this
service."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from api.openapi.declare import answer, content, documented
from models.errors import NotFound

blueprint = Blueprint("docs", __name__)

# Swagger UI's files the page uses (and the source maps a browser's tools ask for).
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui.css.map": "application/json",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-bundle.js.map": "application/json",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
# Ours: starts Swagger UI on this service's document. A file, not an inline script, so that
# the policy needs no 'unsafe-inline'. No validator badge: it would ask swagger.io.
INITIALIZER = "voicechat-docs.js"
INITIALIZER_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""
PAGE = f"""\
<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Voice chat inference service: API</title>
    <link rel="stylesheet" href="/docs/swagger-ui.css">
    <link rel="stylesheet" href="/docs/index.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js"></script>
    <script src="/docs/{INITIALIZER}"></script>
  </body>
</html>
"""
# Everything from this service alone. Swagger UI's stylesheet draws its icons as data: URIs;
# its scripts set styles through the DOM (element.style), which style-src does not govern.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The files change only with the package's pinned version; the ETag revalidates them after.
ASSET_MAX_AGE = 86_400
_FOLDER = Path(str(swagger_ui_path))


def _secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/docs")
@documented({200: answer("The page.", body=content({"type": "string"}, "text/html"))})
def docs_page() -> Response:
    """The API's documentation.

    Swagger UI over this document, every file of it served by this service (no CDN), under a
    Content-Security-Policy that allows this service alone. "Authorize" takes an API key.
    """
    response = Response(PAGE, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return _secured(response)


@blueprint.get("/docs/<file_name>")
@documented(
    {
        200: answer(
            "The file.",
            body={
                media_type: {"schema": {"type": "string"}}
                for media_type in sorted({*ASSETS.values(), "text/javascript"})
            },
        ),
        304: answer("Not modified since the copy the client holds."),
    },
    errors=(NotFound,),
    notes={404: "No file of the page has this name."},
)
def docs_file(file_name: str) -> Response:
    """A file of the documentation page.

    Swagger UI's script, stylesheet and icons, from the installed swagger-ui-bundle package,
    cacheable for a day and revalidated by `ETag`.
    """
    if file_name == INITIALIZER:
        response = Response(INITIALIZER_JS, mimetype="text/javascript")
        response.headers["Cache-Control"] = "no-cache"
        return _secured(response)
    media_type = ASSETS.get(file_name)
    if media_type is None:
        raise NotFound(f"The docs have no file {file_name!r}.")
    response = send_from_directory(
        _FOLDER, file_name, mimetype=media_type, max_age=ASSET_MAX_AGE, conditional=True
    )
    response.cache_control.public = True
    return _secured(response)
