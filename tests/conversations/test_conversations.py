"""Conversations on the real service: a chat far longer than the model's window keeps answering,
voice turns join it as their transcripts, and an unknown conversation is refused."""

from __future__ import annotations

import pytest

from tests.conftest import Service

pytestmark = pytest.mark.e2e


def test_a_long_conversation_keeps_answering(service: Service, question_wav: bytes) -> None:
    made = service.http.post(
        f"{service.url}/v1/conversations", json={"system": "Answer in a few words."}, timeout=10
    )
    assert made.status_code == 201
    conversation_id = made.json()["id"]
    # Each prompt is about 600 tokens: the history outgrows the 2,048-token window by turn 4.
    filler = "Here is some context about my day, which was long and full of errands. " * 40
    usages = []
    for turn in range(6):
        response = service.http.post(
            f"{service.url}/v1/jobs",
            json={
                "text": f"{filler} Question {turn}: what number is this question?",
                "conversation_id": conversation_id,
                "max_tokens": 16,
            },
            headers={"Prefer": "wait=120"},
            timeout=150,
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded", job
        assert job["conversation_id"] == conversation_id
        usages.append(job["result"]["usage"]["prompt_tokens"])
    # A voice turn joins the same conversation as its transcript.
    voice = service.http.post(
        f"{service.url}/v1/jobs",
        files={"audio": ("q.wav", question_wav, "audio/wav")},
        data={"conversation_id": conversation_id, "max_tokens": "16"},
        headers={"Prefer": "wait=120"},
        timeout=150,
    )
    assert voice.status_code == 200 and voice.json()["status"] == "succeeded", voice.text
    assert max(usages) <= 2048 - 16  # trimmed to fit, with room for the reply
    assert usages[3] < usages[2] + 400  # the oldest turns were dropped, not piled up
    conversation = service.http.get(
        f"{service.url}/v1/conversations/{conversation_id}", timeout=10
    ).json()
    turns = conversation["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"] * 7
    assert "capital" in turns[-2]["content"].lower()  # the voice turn, as its transcript
    assert sum(len(t["content"]) for t in turns) > 4 * 2048  # far beyond the window


def test_a_conversation_must_exist(service: Service) -> None:
    response = service.http.post(
        f"{service.url}/v1/jobs",
        json={"text": "hi", "conversation_id": "f" * 32},
        timeout=10,
    )
    assert response.status_code == 404 and response.json()["code"] == "conversation_not_found"
    bad = service.http.post(
        f"{service.url}/v1/jobs", json={"text": "hi", "conversation_id": "x"}, timeout=10
    )
    assert bad.status_code == 422 and bad.json()["field"] == "conversation_id"
