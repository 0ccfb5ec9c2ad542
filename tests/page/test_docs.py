"""The API's documentation page, /docs: Swagger UI served whole by the service, nothing from
elsewhere, and the page rendering this service's OpenAPI 3.1 document in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from harness.stack import FAST_ENGINES, Stack, api_only
from tests.conftest import make_settings

MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
EXTERNAL = re.compile(r"(?:https?:)?//", re.IGNORECASE)


class References(HTMLParser):
    """Collects what a page loads: script sources, stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            if values.get("src"):
                self.found.append(("script", str(values["src"])))
            else:
                self.inline_scripts += 1
        elif tag == "link" and values.get("href"):
            self.found.append((str(values.get("rel")), str(values["href"])))


@pytest.fixture
def client(tmp_path: Path) -> Any:
    app = create_app({"settings": make_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")})
    return app.test_client()


def _references(client: Any) -> References:
    page = client.get("/docs")
    parser = References()
    parser.feed(page.get_data(as_text=True))
    return parser


def test_the_page_is_html_that_loads_only_this_services_files(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Cache-Control"] == "no-cache"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert "http" not in policy and "*" not in policy
    text = page.get_data(as_text=True)
    assert not EXTERNAL.search(text), "an address outside this service"

    parser = _references(client)
    kinds = {kind for kind, _ in parser.found}
    assert {"script", "stylesheet", "icon"} <= kinds and parser.inline_scripts == 0
    for _kind, reference in parser.found:
        assert reference.startswith("/docs/"), reference


def test_every_file_the_page_loads_answers_with_its_type_and_caching(client: Any) -> None:
    for _kind, reference in _references(client).found:
        answer = client.get(reference)
        assert answer.status_code == 200, reference
        assert answer.mimetype == MEDIA_TYPES[Path(reference).suffix], reference
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        body = answer.get_data()
        assert len(body) > 0
        if reference.endswith(".css"):
            # Stylesheets load nothing more from elsewhere: icons are data: URIs.
            text = body.decode()
            assert "@import" not in text
            for target in re.findall(r"url\(\s*['\"]?([^'\")]*)", text):
                assert target.startswith("data:") or not EXTERNAL.match(target), target
        if reference.endswith("voicechat-docs.js"):
            # Our initializer: this service's document, and no validator badge from swagger.io.
            text = body.decode()
            assert 'url: "/openapi.json"' in text and "validatorUrl: null" in text
            assert not EXTERNAL.search(text)
            continue
        # Swagger UI's own files: cacheable, revalidated by their ETag.
        assert answer.cache_control.public and answer.cache_control.max_age == 86_400
        again = client.get(reference, headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status_code == 304, reference


def test_unknown_files_are_a_problem_not_a_file_of_the_package(client: Any) -> None:
    for name in ("index.html", "nothing.js", "..%2Fswagger-initializer.js", "%2e%2e"):
        answer = client.get(f"/docs/{name}")
        assert answer.status_code == 404, name
        assert answer.mimetype == "application/problem+json"
        assert answer.json["code"] == "not_found"


def test_the_docs_need_no_api_key(client: Any) -> None:
    """From another machine a service without keys answers /v1 with 401; the docs are read
    by anyone, as /openapi.json is."""
    elsewhere = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/v1/jobs", environ_base=elsewhere).status_code == 401
    assert client.get("/docs", environ_base=elsewhere).status_code == 200
    assert client.get("/docs/swagger-ui.css", environ_base=elsewhere).status_code == 200


def test_the_document_lists_the_docs_without_security(client: Any) -> None:
    document = client.get("/openapi.json").json
    page = document["paths"]["/docs"]["get"]
    assert page["tags"] == ["meta"] and page["security"] == []
    assert set(page["responses"]["200"]["content"]) == {"text/html"}
    file = document["paths"]["/docs/{file_name}"]["get"]
    assert file["security"] == [] and "404" in file["responses"]
    assert document["components"]["parameters"]["FileName"]["description"] == "The file name."


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with api_only(tmp_path_factory.mktemp("docs"), **FAST_ENGINES) as stack:
        yield stack


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt: chromium)")
def test_a_browser_renders_the_document_under_the_policy(api_stack: Stack, tmp_path: Path) -> None:
    """Swagger UI, held to the page's Content-Security-Policy, reads this OpenAPI 3.1 document
    and shows its operations (Swagger UI 4 could not: it refuses `openapi: 3.1.0`)."""
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",  # tests run as root
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{api_stack.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "Voice chat inference service" in dom  # the document's title, rendered
    assert "Submit a prompt" in dom and "/v1/jobs/{job_id}/events" in dom
    assert "Unable to render this definition" not in dom
