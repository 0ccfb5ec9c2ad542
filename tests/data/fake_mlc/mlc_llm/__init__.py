"""A fake of MLC LLM (named as such) for the Orin's policy tests on a machine without MLC.

Like the real one it reads MLC_JIT_POLICY and MLC_DOWNLOAD_CACHE_POLICY from the environment
when imported (mlc_llm/support/constants.py), refuses with MLC's own messages what those
policies forbid, and runs a non-daemon thread until `terminate()` (mlc_llm/serve/engine.py).
Its "model library" is a marker file in MLC_LLM_HOME, keyed by the context size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MLC_JIT_POLICY = os.environ.get("MLC_JIT_POLICY", "ON")
MLC_DOWNLOAD_CACHE_POLICY = os.environ.get("MLC_DOWNLOAD_CACHE_POLICY", "ON")
MLC_LLM_HOME = Path(os.environ["MLC_LLM_HOME"])


class MLCEngine:
    """Downloads (a marker), compiles (a marker) and answers "Hello." to everything."""

    def __init__(self, model: str, *, device: str, mode: str, engine_config: Any) -> None:
        weights = MLC_LLM_HOME / "model_weights" / model.removeprefix("HF://")
        if not weights.is_dir():
            if MLC_DOWNLOAD_CACHE_POLICY == "READONLY":
                raise RuntimeError(
                    f"Cannot find cache for {model}, cannot proceed to download as "
                    "MLC_DOWNLOAD_CACHE_POLICY=READONLY"
                )
            weights.mkdir(parents=True)
        library = MLC_LLM_HOME / "model_lib" / f"{engine_config.max_single_sequence_length}.so"
        if not library.is_file():
            if MLC_JIT_POLICY == "READONLY":
                raise RuntimeError(
                    "No cached model lib found, and JIT is disabled by MLC_JIT_POLICY=READONLY"
                )
            library.parent.mkdir(parents=True, exist_ok=True)
            library.write_text(device)
        self.tokenizer = SimpleNamespace(encode=lambda text: text.split())
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stop.wait, name="fake-mlc-engine")
        self._thread.start()  # not a daemon: the process cannot exit until terminate()

    def _create(self, **request: Any) -> Iterator[Any]:
        for piece in ("Hello", "."):
            delta = SimpleNamespace(content=piece)
            yield SimpleNamespace(
                choices=[SimpleNamespace(delta=delta, finish_reason=None)], usage=None
            )
        usage = SimpleNamespace(prompt_tokens=5, completion_tokens=2)
        done = SimpleNamespace(delta=None, finish_reason="stop")
        yield SimpleNamespace(choices=[done], usage=usage)

    def terminate(self) -> None:
        self._stop.set()
        self._thread.join()
