"""The packaged models: presets, and assembling a model shipped in parts once, verified."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pytest

from api.openai.schemas import served_model_ids
from models.errors import EngineUnavailable
from models.presets import PRESETS, llm_model_id
from models.settings import SettingError
from tests.conftest import make_settings
from worker.engines import model_files
from worker.engines.model_files import assemble, llm_model_file


def _parts(folder: Path, *chunks: bytes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, chunk in enumerate(chunks, start=1):
        path = folder / f"part{number:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths


def test_parts_are_joined_in_order_and_stamped(tmp_path: Path) -> None:
    parts = _parts(tmp_path / "pkg", b"abc", b"def", b"g")
    target = tmp_path / "models" / "model.gguf"
    assert assemble(target, parts, hashlib.sha256(b"abcdefg").hexdigest()) == target
    assert target.read_bytes() == b"abcdefg"
    assert target.with_name("model.gguf.sha256").read_text().strip() == (
        hashlib.sha256(b"abcdefg").hexdigest()
    )


def test_a_mismatch_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    parts = _parts(tmp_path / "pkg", b"abc", b"tampered")
    target = tmp_path / "models" / "model.gguf"
    with pytest.raises(EngineUnavailable, match=r"expected 0{64}: refusing it .*--force-reinstall"):
        assemble(target, parts, "0" * 64)
    assert sorted(p.name for p in target.parent.iterdir()) == [".model.gguf.lock"]


def test_two_workers_starting_together_assemble_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parts = _parts(tmp_path / "pkg", b"x" * (3 << 20), b"y" * (2 << 20))
    digest = hashlib.sha256(b"x" * (3 << 20) + b"y" * (2 << 20)).hexdigest()
    target = tmp_path / "models" / "model.gguf"
    results: list[Path] = []
    together = threading.Barrier(2)
    caplog.set_level(logging.INFO, logger=model_files.__name__)

    def start() -> None:
        together.wait()
        results.append(assemble(target, parts, digest))

    workers = [threading.Thread(target=start) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == [target, target]
    assert [r.message for r in caplog.records].count(f"assembled model file={target} parts=2") == 1
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def test_a_stamped_file_is_not_read_again(tmp_path: Path) -> None:
    parts = _parts(tmp_path / "pkg", b"abc")
    target = tmp_path / "model.gguf"
    assemble(target, parts, hashlib.sha256(b"abc").hexdigest())
    parts[0].unlink()  # a second assembly would fail on the missing part
    assert assemble(target, parts, hashlib.sha256(b"abc").hexdigest()).read_bytes() == b"abc"


def test_the_default_preset_is_quality_and_others_are_refused(tmp_path: Path) -> None:
    assert make_settings(tmp_path, LLM_PRESET="quality").llm_preset == "quality"
    with pytest.raises(SettingError, match=r"LLM_PRESET: .*'quality' or 'fast', got 'best'"):
        make_settings(tmp_path, LLM_PRESET="best")


def test_model_path_overrides_the_preset(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, LLM_MODEL_PATH=str(tmp_path / "mine.gguf"))
    assert llm_model_file(settings) == tmp_path / "mine.gguf"
    assert llm_model_id(settings) == "mine"


def test_the_fast_preset_is_the_packaged_smollm2(tmp_path: Path) -> None:
    path = llm_model_file(make_settings(tmp_path, LLM_PRESET="fast"))
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert not (tmp_path / "models").exists()  # shipped whole: nothing assembled


def test_the_api_serves_each_preset_under_its_model_id(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        settings = make_settings(tmp_path, LLM_PRESET=name)
        assert served_model_ids(settings)[0] == llm_model_id(settings) == preset.model_id
