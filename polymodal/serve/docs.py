"""GET /docs without a network: Swagger UI served from the `fastapi-offline` package, never from a CDN.

FastAPI's own /docs page loads Swagger UI from a CDN, so it is blank on a machine without internet access.
`fastapi-offline` (part of the serve extra) ships Swagger UI 5's files (5 reads the OpenAPI 3.1 that FastAPI
writes; the Swagger UI 4 of `swagger-ui-bundle` does not); /docs/assets/ serves three of them.
Without that package, /docs is a plain HTML list of the operations and their descriptions, built from the
OpenAPI schema on the server (no script, no outside host), with a link to /openapi.json.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" href="/docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null}});
</script>
</body>
</html>
"""


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's files from the fastapi-offline package, or None when it is not installed."""
    try:
        import fastapi_offline  # optional: installed with polymodal[serve]; only its static files are used
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if all((path / name).is_file() for name in ASSETS) else None


def plain_page(app: FastAPI) -> str:
    """An HTML list of the API's operations from its OpenAPI schema: the offline /docs without Swagger UI."""
    spec = app.openapi()
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            text = op.get("description") or op.get("summary") or ""
            rows.append(f"<dt><code>{html.escape(method.upper())} {html.escape(path)}</code></dt>"
                        f"<dd>{html.escape(text)}</dd>")
    title = html.escape(spec.get("info", {}).get("title", "API"))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head><body>'
            f"<h1>{title}</h1><p>{html.escape(spec.get('info', {}).get('description', ''))}</p>"
            f"<dl>{''.join(rows)}</dl><p>The full schema: <a href=\"/openapi.json\">/openapi.json</a>. Interactive "
            "docs need the <code>fastapi-offline</code> package (<code>pip install 'polymodal[serve]'</code>)."
            "</p></body></html>")


def add_docs(app: FastAPI) -> None:
    """GET /docs and /docs/assets/{name} (create the app with docs_url=None so FastAPI's CDN page is off)."""
    assets = swagger_ui_dir()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(plain_page(app))
        return HTMLResponse(SWAGGER_PAGE.format(title=html.escape(app.title)))

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        if assets is None or name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            raise HTTPException(404, f"no such docs asset: {name}")
        return FileResponse(assets / name, media_type=ASSETS[name])
