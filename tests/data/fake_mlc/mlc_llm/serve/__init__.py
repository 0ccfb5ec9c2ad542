"""The fake MLC LLM's `EngineConfig` (tests/data/fake_mlc/mlc_llm/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    max_single_sequence_length: int
    max_total_sequence_length: int
