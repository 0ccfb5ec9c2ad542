// The service's public API as the page uses it: problem+json errors, conversations, jobs, a
// job's events (Server-Sent Events read with fetch, which can send an API key where
// EventSource cannot) and the spoken reply streamed as raw 16-bit PCM.

const KEY_STORAGE = "voicechat.apiKey";
// A broken event stream is resumed after its last event this many times before giving up.
const RESUMES = 3;

/** A refused request or an unreachable service: the problem document's fields. */
export class ServiceError extends Error {
  /**
   * @param {number} status the HTTP status, 0 when no answer came
   * @param {string} code the problem's stable `code`
   * @param {string} detail what went wrong, for a person
   * @param {number|null} retryAfter seconds from `Retry-After`, when the answer had one
   */
  constructor(status, code, detail, retryAfter = null) {
    super(detail);
    this.name = "ServiceError";
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

/** Keeps the key for this tab's session only (never localStorage: it would outlive it). */
export function setApiKey(key) {
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(KEY_STORAGE);
  }
}

function unreachable() {
  return new ServiceError(
    0,
    "network_error",
    "The service could not be reached: check that it is running and that this computer is online.",
  );
}

async function problemOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not a problem document (a proxy's page, say): the status says enough.
  }
  const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ServiceError(
    response.status,
    typeof body.code === "string" ? body.code : `http_${response.status}`,
    typeof body.detail === "string" ? body.detail : response.statusText || "The request failed.",
    Number.isFinite(seconds) ? seconds : null,
  );
}

/** fetch() with the API key, turning refusals and network failures into ServiceErrors. */
async function call(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = apiKey();
  if (key) {
    headers.set("Authorization", `Bearer ${key}`);
  }
  let response;
  try {
    response = await fetch(path, { ...init, headers, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") {
      throw error;
    }
    throw unreachable();
  }
  if (!response.ok) {
    throw await problemOf(response);
  }
  return response;
}

export async function createConversation() {
  return (await call("/v1/conversations", { method: "POST" })).json();
}

export async function getConversation(conversationId) {
  return (await call(`/v1/conversations/${encodeURIComponent(conversationId)}`)).json();
}

export async function getJob(jobId) {
  return (await call(`/v1/jobs/${encodeURIComponent(jobId)}`)).json();
}

/** Asks the service to stop a job; the job's events then end it `canceled`. */
export async function cancelJob(jobId) {
  return (await call(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" })).json();
}

/**
 * Submits a typed prompt.
 * @param {string} text
 * @param {"text"|"voice"} reply
 * @param {string|null} conversationId
 */
export async function submitText(text, reply, conversationId) {
  const body = { text, reply };
  if (conversationId) {
    body.conversation_id = conversationId;
  }
  const response = await call("/v1/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

/**
 * Submits a recording as a multipart upload (the `audio` part, a WAV).
 * @param {Blob} wav
 * @param {"text"|"voice"} reply
 * @param {string|null} conversationId
 */
export async function submitRecording(wav, reply, conversationId) {
  const form = new FormData();
  form.append("audio", wav, "question.wav");
  form.append("reply", reply);
  if (conversationId) {
    form.append("conversation_id", conversationId);
  }
  return (await call("/v1/jobs", { method: "POST", body: form })).json();
}

/** Splits a text/event-stream body into events: `{type, id, data}` with `data` parsed. */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let id = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return;
      }
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) !== -1) {
        if (buffer[end] === "\r" && end === buffer.length - 1) {
          break; // a CR at the end of a read may be half of a CRLF
        }
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (data.length > 0) {
            yield { type: type || "message", id, data: JSON.parse(data.join("\n")) };
          }
          type = "";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon === -1 ? line : line.slice(0, colon);
          let value = colon === -1 ? "" : line.slice(colon + 1);
          value = value.startsWith(" ") ? value.slice(1) : value;
          if (field === "event") {
            type = value;
          } else if (field === "data") {
            data.push(value);
          } else if (field === "id") {
            id = value;
          }
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * A job's events from the first, ending with `done`. A stream that breaks off is resumed
 * after its last event (`?after=`), as EventSource would with `Last-Event-ID`.
 * @param {string} jobId
 * @param {AbortSignal} signal
 */
export async function* jobEvents(jobId, signal) {
  let after = "0";
  for (let resumes = 0; ; resumes += 1) {
    try {
      const path = `/v1/jobs/${encodeURIComponent(jobId)}/events?after=${encodeURIComponent(after)}`;
      const response = await call(path, { headers: { Accept: "text/event-stream" }, signal });
      if (response.status === 204) {
        return; // nothing after `after`: the job had ended
      }
      for await (const event of serverSentEvents(response.body)) {
        after = event.id || after;
        yield event;
        if (event.type === "done") {
          return;
        }
      }
    } catch (error) {
      const broken = error.name === "TypeError" || error.code === "network_error";
      if (error.name === "AbortError" || !broken || resumes >= RESUMES) {
        throw broken ? unreachable() : error;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 500 * (resumes + 1)));
  }
}

/**
 * Streams the spoken reply as raw 16-bit little-endian PCM, handing on each piece as floats.
 * @param {string} jobId
 * @param {(samples: Float32Array, rate: number|null) => void} onSamples `rate` from
 *     `X-Sample-Rate` (sent once the job has finished), else null
 * @param {AbortSignal} signal
 * @returns {Promise<number>} the bytes received
 */
export async function streamReplyAudio(jobId, onSamples, signal) {
  const response = await call(`/v1/jobs/${encodeURIComponent(jobId)}/audio?format=pcm`, { signal });
  const rate = Number.parseInt(response.headers.get("X-Sample-Rate") || "", 10) || null;
  const reader = response.body.getReader();
  let received = 0;
  let odd = null; // a byte of a sample split between two reads
  for (;;) {
    let read;
    try {
      read = await reader.read();
    } catch (error) {
      throw error.name === "AbortError" ? error : unreachable();
    }
    if (read.done) {
      return received;
    }
    let bytes = read.value;
    received += bytes.length;
    if (odd !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = odd;
      joined.set(bytes, 1);
      bytes = joined;
      odd = null;
    }
    if (bytes.length % 2 === 1) {
      odd = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const samples = new Float32Array(bytes.length / 2);
    for (let i = 0; i < samples.length; i += 1) {
      samples[i] = view.getInt16(i * 2, true) / 32768;
    }
    if (samples.length > 0) {
      onSamples(samples, rate);
    }
  }
}

/** The finished reply as its stored WAV. */
export async function replyWav(jobId) {
  return (await call(`/v1/jobs/${encodeURIComponent(jobId)}/audio`)).blob();
}
