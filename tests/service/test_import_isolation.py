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


def test_the_worker_renders_a_webhook_body_without_web_code(tmp_path: object) -> None:
    """The webhook body is the job's public shape from models/, never the API's Flask app."""
    script = (
        "import json, sys\n"
        "from datetime import UTC, datetime\n"
        "from models.tables import Job\n"
        "from worker import webhooks\n"
        "now = datetime.now(UTC)\n"
        "job = Job(id='0' * 32, operation='chat', status='succeeded', reply_format='text', "
        "input_kind='text', input_text='hi', attempts=1, created_at=now, finished_at=now)\n"
        "assert json.loads(webhooks._body(job, 'completed'))['data']['status'] == 'succeeded'\n"
        "print(json.dumps(sorted(m for m in ('api', 'flask') if m in sys.modules)))\n"
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
