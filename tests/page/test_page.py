"""The voice chat page's files as the service sends them: every asset from this origin, under its
Content-Security-Policy, nothing inline and nothing from elsewhere (the browser test,
tests/page/test_browser.py, runs the page itself)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.page import CONTENT_SECURITY_POLICY
from tests.conftest import ROOT, make_settings

ASSETS = ROOT / "api" / "static" / "chat"
# A module's imports and the files it names relative to itself (the AudioWorklet's module).
_ELSEWHERE = re.compile(r"https?://(?!127\.0\.0\.1\b|localhost\b)|//[a-z0-9.-]+\.[a-z]{2,}/")
_RELATIVE = re.compile(r"""(?:from\s+|import\s*\(\s*|new URL\(\s*)["'](\./[^"']+)["']""")


class _Page(HTMLParser):
    """What a page loads (`src`, `href`) and what it holds inline."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.loads += [value for key, value in attrs if key in ("src", "href") and value]
        self.inline += [key for key, _ in attrs if key == "style" or key.startswith("on")]
        if tag == "style":
            self.inline.append("<style>")
        self._in_script = tag == "script"
        if self._in_script and not named.get("src"):
            self.inline.append("<script> without src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script> with a body")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.fixture
def client(tmp_path: Path) -> Any:
    settings = make_settings(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    return create_app({"settings": settings}).test_client()


def test_the_page_is_served_under_its_policy(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-cache"
    parsed = _Page()
    parsed.feed(page.get_data(as_text=True))
    assert not parsed.inline  # the policy would refuse it
    assert parsed.loads and all(load.startswith("/static/chat/") for load in parsed.loads)


def test_every_asset_is_served_from_here(client: Any) -> None:
    parsed = _Page()
    parsed.feed((ASSETS / "index.html").read_text())
    wanted = {load.removeprefix("/static/chat/") for load in parsed.loads}
    scripts = sorted(ASSETS.glob("*.js"))
    for script in scripts:
        wanted |= set(m.removeprefix("./") for m in _RELATIVE.findall(script.read_text()))
    for asset in (*scripts, *ASSETS.glob("*.css"), ASSETS / "index.html"):
        # No CDN: no address of another site (the messages name this machine's own).
        assert not _ELSEWHERE.search(asset.read_text()), f"{asset.name} loads from elsewhere"
    # Every module is reached from the page, and every file the page needs exists.
    assert {script.name for script in scripts} <= wanted
    for name in sorted(wanted):
        served = client.get(f"/static/chat/{name}")
        assert served.status_code == 200, name
        assert served.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        if name.endswith(".js"):
            assert served.mimetype in ("text/javascript", "application/javascript"), name


def test_a_missing_asset_is_a_problem(client: Any) -> None:
    missing = client.get("/static/chat/nothing.js")
    assert missing.status_code == 404
    assert missing.json is not None and missing.json["code"] == "not_found"
