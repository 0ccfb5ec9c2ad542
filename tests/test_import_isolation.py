"""The web process never imports model libraries or worker code."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ["torch", "ctranslate2", "faster_whisper", "llama_cpp", "piper", "whisper", "TTS", "worker"]


def test_creating_the_app_imports_no_model_code(tmp_path: object) -> None:
    script = (
        "import json, sys\n"
        "from api import create_app\n"
        "create_app()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(output.strip().splitlines()[-1]) == []
