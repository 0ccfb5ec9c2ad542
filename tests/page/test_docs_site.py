"""The documentation site: `mkdocs build --strict` without a warning, and the README's links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest.importorskip("mkdocs", reason="mkdocs comes with requirements-dev.txt (bootstrap.sh --dev)")

# A Markdown link or image: [text](target) or ![alt](target), the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built strictly into a temporary folder; the build's output must hold no warning."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        check=False,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def test_every_page_is_built(site: Path) -> None:
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    for page in pages:
        built = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"docs/{page}.md was not built"


def test_readme_links_are_relative_and_resolve(site: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    local = [t for t in LINK.findall(readme) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in local), "the README links into docs/"
    for target in local:
        path, _, anchor = target.partition("#")
        assert not path.startswith("/"), f"{target}: not relative"
        assert (ROOT / path).is_file(), f"{target}: no such file"
        if anchor and path.startswith("docs/") and path.endswith(".md"):
            page = Path(path).relative_to("docs").with_suffix("")
            html = site / ("index.html" if page.name == "index" else f"{page}/index.html")
            assert f'id="{anchor}"' in html.read_text(encoding="utf-8"), f"{target}: no such anchor"


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    first_block = readme.split("```")[1].split("\n", 1)[1]
    assert first_block.startswith("scripts/serve.sh")
    assert "scripts/test.sh" in first_block
