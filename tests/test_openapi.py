"""The served OpenAPI document is valid OpenAPI 3.1 and covers every route the app has."""

from __future__ import annotations

import re
from pathlib import Path

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from api import create_app
from tests.conftest import make_settings


def test_document_is_valid_and_complete(tmp_path: Path) -> None:
    app = create_app({"settings": make_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")})
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document is not None
    validate(document, cls=OpenAPIV31SpecValidator)
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert routes == set(document["paths"])
