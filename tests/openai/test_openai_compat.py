"""The OpenAI-compatible routes, driven by the official `openai` package as a real client.

The service runs as the README starts it, on the real models (SmolLM2, Whisper base, Piper).
"""

from __future__ import annotations

import io
import re
import time
from datetime import datetime
from typing import Any

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import QUESTION, Service

pytestmark = pytest.mark.e2e

CHAT_MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def client(service: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.secret, max_retries=0)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def test_models_lists_one_model_per_stage(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [CHAT_MODEL, "whisper-1", "tts-1", "tts-1-hd"]


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": QUESTION},
        ],
        max_tokens=40,
        temperature=0,
    )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_cut_reply_reports_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        max_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens <= 6


def test_streamed_chat_arrives_before_the_reply_is_finished(
    client: openai.OpenAI, service: Service
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Describe the sea in three sentences."}],
        max_tokens=120,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    job_id = raw.headers["X-Job-Id"]
    arrivals: list[tuple[float, Any]] = []
    for chunk in raw.parse():
        arrivals.append((time.time(), chunk))
    chunks = [chunk for _, chunk in arrivals]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 5
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= len(texts) // 2
    # The first piece of text reached the client before the worker finished the reply.
    job = service.http.get(f"{service.url}/v1/jobs/{job_id}", timeout=10).json()
    finished_at = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()
    first_text_at = next(at for at, c in arrivals if c.choices and c.choices[0].delta.content)
    assert first_text_at < finished_at - 0.2, (first_text_at, finished_at)
    assert "".join(texts).strip() == job["result"]["text"]


def test_stop_sequences_end_the_reply(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        "max_tokens": 40,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**ask).choices[0].message.content or ""
    assert "5" in whole, whole  # unstopped, the model counts past 5
    cut = client.chat.completions.create(**ask, stop=["5", "five"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content
    assert "5" not in cut.message.content and whole.startswith(cut.message.content.strip())


def test_the_same_seed_samples_the_same_reply(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Name a colour and an animal."}],
        "max_tokens": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
    }
    # Once unseeded first: each seeded call then finds the prompt evaluated the same way (its
    # last token's logits differ in their last bits when evaluated with the whole prompt).
    client.chat.completions.create(**ask)
    replies = [
        client.chat.completions.create(**ask, seed=7).choices[0].message.content for _ in range(3)
    ]
    assert replies[0] and replies.count(replies[0]) == 3, replies


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"


def test_bad_parameters_get_openai_shaped_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    body = raised.value.body
    assert isinstance(body, dict) and body["param"] == "temperature"
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_option"
    # 2**32 - 1 is llama.cpp's "any seed": refused, or that seed would not repeat a reply.
    for wrong in ({"top_p": 0}, {"stop": ["a"] * 5}, {"seed": 2**32 - 1}, {"presence_penalty": 3}):
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], **wrong
            )
        assert isinstance(raised.value.body, dict) and raised.value.body["param"] == next(
            iter(wrong)
        )


def test_a_prompt_too_long_for_the_window_is_422(client: openai.OpenAI) -> None:
    # 3,900 CJK characters: under the 4,000-character text limit, over 2,048 tokens.
    rng = np.random.default_rng(1)
    prompt = "".join(chr(int(c)) for c in rng.integers(0x4E00, 0x9FFF, 3900))
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=10
        )
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "messages"
    assert "2048-token context window" in str(raised.value.message)


def test_a_message_over_the_job_text_limit_that_fits_the_window_is_answered(
    client: openai.OpenAI,
) -> None:
    # 5,900 characters of English (about 1,300 tokens): over MAX_TEXT_CHARS, under the window.
    words = ("the quick brown fox jumps over a lazy dog by the river " * 120)[:5_900]
    answer = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": words}], max_tokens=5
    )
    assert answer.choices[0].message.content


def test_transcription_of_the_spoken_question(client: openai.OpenAI, question_wav: bytes) -> None:
    transcript = client.audio.transcriptions.create(
        model="whisper-1", file=("question.wav", question_wav, "audio/wav")
    )
    assert {"capital", "france"} <= _words(transcript.text)


@pytest.mark.parametrize("response_format", ["text", "verbose_json", "srt", "vtt"])
def test_transcription_formats(
    client: openai.OpenAI, question_wav: bytes, response_format: str
) -> None:
    answer: Any = client.audio.transcriptions.create(
        model="whisper-1",
        file=("question.wav", question_wav, "audio/wav"),
        response_format=response_format,  # type: ignore[arg-type]
        language="en",
    )
    if response_format == "verbose_json":
        assert answer.language == "en" and answer.duration > 1
        assert answer.segments and answer.segments[0].end > answer.segments[0].start
        text = answer.text
    else:
        text = str(answer)
    assert {"capital", "france"} <= _words(text)
    if response_format == "srt":
        assert re.search(r"^1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", text)
    if response_format == "vtt":
        assert text.startswith("WEBVTT\n\n00:00:")


def test_speech_to_a_wav(client: openai.OpenAI) -> None:
    audio = client.audio.speech.create(
        model="tts-1", voice="alloy", input="The capital of France is Paris.", response_format="wav"
    ).read()
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    info = sf.info(io.BytesIO(audio))
    assert info.format == "WAV" and info.channels == 1 and rate == 22_050
    assert 1.0 < len(samples) / rate < 6.0
    assert float(np.sqrt(np.mean(samples**2))) > 0.01


def test_speech_as_raw_pcm_at_24khz_and_faster(client: openai.OpenAI) -> None:
    text = "One, two, three, four, five."
    normal = client.audio.speech.create(
        model="tts-1", voice="nova", input=text, response_format="pcm"
    ).read()
    fast = client.audio.speech.create(
        model="tts-1", voice="nova", input=text, response_format="pcm", speed=2.0
    ).read()
    assert len(normal) % 2 == 0
    seconds = len(normal) / 2 / 24_000
    assert 1.0 < seconds < 6.0
    assert len(fast) < 0.7 * len(normal)


def test_speech_takes_openai_s_4096_characters(client: openai.OpenAI) -> None:
    text = ("Paris. " * 600)[:4096]  # over MAX_TEXT_CHARS (4000), the prompt limit
    audio = client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="wav"
    ).read()
    assert sf.info(io.BytesIO(audio)).duration > 60


def test_speech_refuses_an_unknown_voice(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")  # type: ignore[arg-type]
    assert raised.value.body["param"] == "voice"  # type: ignore[index]


@pytest.mark.parametrize(
    ("response_format", "container"), [(None, "MP3"), ("flac", "FLAC"), ("opus", "OGG")]
)
def test_speech_in_compressed_formats(
    client: openai.OpenAI, response_format: str | None, container: str
) -> None:
    extra: dict[str, Any] = {"response_format": response_format} if response_format else {}
    audio = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Paris is the capital.", **extra
    ).read()
    info = sf.info(io.BytesIO(audio))
    assert info.format == container and info.channels == 1
    assert 0.8 < info.duration < 5.0


CHAT_REJECTIONS: dict[str, tuple[Any, int, str, str | None]] = {
    "role not a string": (
        {"messages": [{"role": [], "content": "hi"}]},
        422,
        "invalid_option",
        "messages[0].role",
    ),
    "unknown role": (
        {"messages": [{"role": "tool", "content": "hi"}]},
        422,
        "invalid_option",
        "messages[0].role",
    ),
    "messages empty": ({"messages": []}, 422, "invalid_option", "messages"),
    "last is not the user's": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        422,
        "invalid_option",
        "messages",
    ),
    "image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        422,
        "invalid_option",
        "messages[0].content",
    ),
    "unknown parameter": ({"tools": []}, 422, "invalid_option", "tools"),
    "stream not a boolean": ({"stream": "yes"}, 422, "invalid_option", "stream"),
    "stream_options without stream": (
        {"stream_options": {"include_usage": True}},
        422,
        "invalid_option",
        "stream_options",
    ),
    "n of 2": ({"n": 2}, 422, "invalid_option", "n"),
    "max_tokens zero": ({"max_tokens": 0}, 422, "invalid_option", "max_tokens"),
    "empty prompt": (
        {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "  "}]},
        422,
        "empty_text",
        "messages[1].content",
    ),
    "empty system message": (
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]},
        422,
        "empty_text",
        "messages[0].content",
    ),
    "blank content parts": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]},
        422,
        "empty_text",
        "messages[0].content",
    ),
    "messages too long in all": (
        {"messages": [{"role": "user", "content": "a" * 30_000}] * 7},
        422,
        "messages_too_long",
        "messages",
    ),
    "model missing": ({"model": None}, 422, "invalid_option", "model"),
}


def _openai_error(response: Any, status: int, code: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize(
    ("change", "status", "code", "param"), CHAT_REJECTIONS.values(), ids=CHAT_REJECTIONS.keys()
)
def test_chat_rejections(
    service: Service, change: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = service.http.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)
    _openai_error(response, status, code, param)


SPEECH_REJECTIONS: dict[str, tuple[Any, str]] = {
    "format not a string": ({"response_format": []}, "response_format"),
    "unknown format": ({"response_format": "aac"}, "response_format"),
    "speed too fast": ({"speed": 10}, "speed"),
    "input not a string": ({"input": 5}, "input"),
    "input with NUL": ({"input": "a\u0000b"}, "input"),
    "input too long": ({"input": "a" * 4097}, "input"),
}


@pytest.mark.parametrize(
    ("change", "param"), SPEECH_REJECTIONS.values(), ids=SPEECH_REJECTIONS.keys()
)
def test_speech_rejections(service: Service, change: dict[str, Any], param: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **change}
    response = service.http.post(f"{service.url}/v1/audio/speech", json=body, timeout=30)
    _openai_error(response, 422, "invalid_option", param)


def test_transcription_rejections(service: Service, question_wav: bytes) -> None:
    url = f"{service.url}/v1/audio/transcriptions"
    good = {"model": "whisper-1"}
    _openai_error(
        service.http.post(url, data=good, files={"x": b"1"}, timeout=30), 422, "invalid_option", "x"
    )
    _openai_error(
        service.http.post(
            url, data={**good, "response_format": "yaml"}, files={"file": question_wav}, timeout=30
        ),
        422,
        "invalid_option",
        "response_format",
    )
    for language in ("en-GB!", "zz", "EN"):  # Whisper's codes only: "zz" was an engine's 500
        _openai_error(
            service.http.post(
                url, data={**good, "language": language}, files={"file": question_wav}, timeout=30
            ),
            422,
            "invalid_option",
            "language",
        )
    _openai_error(
        service.http.post(url, data=good, files={"file": b"ID3 not a wav at all"}, timeout=30),
        415,
        "unsupported_audio_format",
        None,
    )
    missing = service.http.post(url, data={**good, "file": "text"}, files={"y": b""}, timeout=30)
    assert missing.status_code in (400, 422) and "error" in missing.json()
    plain = service.http.post(url, json={"file": "x"}, timeout=30)
    _openai_error(plain, 415, "unsupported_media_type", None)


def test_event_stream_rejections(service: Service) -> None:
    assert service.http.get(f"{service.url}/v1/jobs/%00/events", timeout=10).status_code == 404
    job = service.wait(service.submit(json={"text": "hi", "max_tokens": 3})["id"])
    url = f"{service.url}/v1/jobs/{job['id']}/events"
    for bogus in ("", "12", "1-2\n", "\uff11-\uff12", "9" * 30 + "-1"):
        response = service.http.get(url, params={"after": bogus}, timeout=10)
        assert response.status_code == 400 and response.json()["code"] == "invalid_header", bogus
        # Last-Event-ID wins over `after`, but both are checked.
        both = service.http.get(
            url, params={"after": bogus}, headers={"Last-Event-ID": "0"}, timeout=10
        )
        assert both.status_code == 400 and both.json()["code"] == "invalid_header", bogus
