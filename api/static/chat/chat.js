// The voice chat page: hold to talk or type, follow the job by its events, hear the reply as
// it is spoken. It uses the public API alone (service.js), as any client would.

import { ReplyPlayer } from "./player.js";
import { Recorder, RecordingError } from "./recorder.js";
import {
  ServiceError,
  apiKey,
  cancelJob,
  createConversation,
  getConversation,
  getJob,
  jobEvents,
  replyWav,
  setApiKey,
  streamReplyAudio,
  submitRecording,
  submitText,
} from "./service.js";
import { Turn } from "./turn.js";

const CONVERSATION_STORAGE = "voicechat.conversationId";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
// A press shorter than this is taken for a click, not a question.
const MIN_RECORDING_SECONDS = 0.3;
const TALK_KEYS = new Set([" ", "Enter"]);
const STAGE_STATUS = {
  queued: "Queued: waiting for a worker…",
  transcribing: "Transcribing your question…",
  generating: "Generating the reply…",
  synthesizing: "Speaking the reply…",
};
const JOB_FAILURES = {
  no_speech:
    "No speech was heard in the recording. Hold the button down while you speak, " +
    "close to the microphone.",
  context_length_exceeded:
    "The question is too long for the model, even without the earlier turns: ask a shorter one.",
  empty_reply: "The model gave an empty reply: try asking in other words.",
  engine_unavailable: "A model of the service is not available at the moment: try again later.",
  timeout: "The reply took too long and was stopped.",
  worker_lost: "The worker answering the question stopped: ask again.",
  insufficient_storage: "The service's disk is full: the spoken reply could not be stored.",
  broker_unavailable: "The question could not be queued: try again in a moment.",
  canceled: "The question was canceled.",
};
// Said of a turn the person stopped with the Stop button: not an error, so no alert.
const STOPPED = "Stopped: the reply so far is kept.";

const page = {
  turns: document.getElementById("turns"),
  empty: document.getElementById("empty"),
  alert: document.getElementById("alert"),
  status: document.getElementById("status"),
  form: document.getElementById("ask"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  talk: document.getElementById("talk"),
  talkLabel: document.getElementById("talk-label"),
  talkTimer: document.getElementById("talk-timer"),
  newConversation: document.getElementById("new-conversation"),
  keyPanel: document.getElementById("key-panel"),
  keyForm: document.getElementById("key-form"),
  keyInput: document.getElementById("api-key"),
  keyState: document.getElementById("key-state"),
  forgetKey: document.getElementById("forget-key"),
};

let context = null; // one AudioContext, made on the first gesture (browsers' autoplay rules)
let recorder = null;
let player = null; // the reply playing now
let busy = false;
let asking = null; // the job being answered: its id, and whether the person stopped it
let talking = null; // the recording under way: {started: Promise, timer}
let wavUrls = [];

function audioContext() {
  context ??= new AudioContext({ latencyHint: "interactive" });
  recorder ??= new Recorder(context);
  context.resume();
  return context;
}

function announce(text) {
  page.status.textContent = text;
}

function clearAlert() {
  // Emptied, never hidden: a live region is announced reliably only if it stays in the page.
  page.alert.replaceChildren();
}

function showAlert(message, code) {
  const text = document.createElement("p");
  text.textContent = message;
  const parts = [text];
  if (code) {
    const detail = document.createElement("p");
    detail.className = "code";
    detail.textContent = `Code: ${code}`;
    parts.push(detail);
  }
  page.alert.replaceChildren(...parts);
}

/** When to ask again, from the answer's Retry-After. */
function retryText(seconds) {
  if (seconds === null) {
    return " Ask again in a moment.";
  }
  const at = new Date(Date.now() + seconds * 1000).toLocaleTimeString();
  return ` Ask again after ${at} (Retry-After: ${seconds} s).`;
}

/** A sentence for the person at the page from a refusal of the service. */
function explain(error) {
  const detail = error.detail;
  switch (error.status) {
    case 0:
      return detail;
    case 401:
      page.keyPanel.open = true;
      return apiKey()
        ? `The API key was refused: ${detail} Check it under “API key”.`
        : "This service needs an API key: enter one under “API key” below.";
    case 403:
      return `The service refuses requests from this page: ${detail}`;
    case 413:
      return `The upload is too large for the service: ${detail} Record a shorter question.`;
    case 415:
      return `The service could not read the recording: ${detail}`;
    case 422:
      return `The service could not take this question: ${detail}`;
    case 429:
      return `Too many requests: ${detail}${retryText(error.retryAfter)}`;
    case 503:
      return `The service is busy or unavailable: ${detail}${retryText(error.retryAfter)}`;
    default:
      return `The service answered ${error.status}: ${detail}`;
  }
}

function report(error, turn) {
  if (error instanceof ServiceError) {
    const message = explain(error);
    showAlert(message, error.code);
    turn?.fail(message);
  } else if (error instanceof RecordingError) {
    showAlert(error.message);
  } else {
    const message = `Something went wrong in this page: ${error.message}`;
    showAlert(message);
    turn?.fail(message);
  }
  announce("");
}

function setBusy(value) {
  busy = value;
  for (const control of [page.talk, page.send]) {
    control.setAttribute("aria-disabled", String(value));
  }
  page.form.setAttribute("aria-busy", String(value));
}

function chosenReply() {
  return page.form.elements.reply.value === "text" ? "text" : "voice";
}

async function conversationId() {
  let id = sessionStorage.getItem(CONVERSATION_STORAGE);
  if (!id) {
    id = (await createConversation()).id;
    sessionStorage.setItem(CONVERSATION_STORAGE, id);
  }
  return id;
}

async function submit(prompt, reply) {
  for (let attempt = 0; ; attempt += 1) {
    const id = await conversationId();
    try {
      return prompt.wav
        ? await submitRecording(prompt.wav, reply, id)
        : await submitText(prompt.text, reply, id);
    } catch (error) {
      // The conversation is gone (another key, a new database): start a new one, once.
      if (error.code !== "conversation_not_found" || attempt > 0) {
        throw error;
      }
      sessionStorage.removeItem(CONVERSATION_STORAGE);
    }
  }
}

/** Streams a reply's audio into a new player; resolves once the stream has ended. */
function playReply(jobId, rate, turn, sentAt) {
  player?.stop();
  const current = new ReplyPlayer(audioContext());
  current.onplayed = (seconds) => turn.played(seconds);
  player = current;
  const controller = new AbortController();
  let bytes = 0;
  let firstAfter = null;
  const done = streamReplyAudio(
    jobId,
    (samples, headerRate) => {
      firstAfter ??= (performance.now() - sentAt) / 1000;
      bytes += samples.length * 2;
      current.play(samples, headerRate || rate);
      turn.audio(bytes, current.seconds, firstAfter);
    },
    controller.signal,
  );
  // Awaited once the job ends, or abandoned (aborted) when the job starts again: never unhandled.
  done.catch(() => {});
  return { controller, done };
}

async function offerWav(jobId, turn) {
  const blob = await replyWav(jobId);
  const url = URL.createObjectURL(blob);
  wavUrls.push(url);
  turn.offerWav(url, jobId);
}

/** Reads a job every few seconds until it ends: for when the service holds too many streams. */
async function poll(jobId, turn, seconds) {
  for (;;) {
    const job = await getJob(jobId);
    if (TERMINAL.has(job.status)) {
      return job;
    }
    turn.stage(job.stage || "queued");
    announce(STAGE_STATUS[job.stage || "queued"]);
    await new Promise((resolve) => setTimeout(resolve, 1000 * (seconds || 2)));
  }
}

/** Follows a job's events to its end, playing a spoken reply as its sentences come. */
async function follow(jobId, turn, reply, sentAt) {
  let audio = null;
  let final = null;
  try {
    final = await readEvents(jobId, turn, reply, sentAt, (playing) => {
      audio = playing;
    });
  } catch (error) {
    if (!(error instanceof ServiceError && error.code === "server_busy")) {
      throw error;
    }
    // No place for one more event stream (MAX_HELD_REQUESTS): the job is read instead.
    final = await poll(jobId, turn, error.retryAfter);
  }
  const job = final && "result" in final ? final : await getJob(jobId);
  if (job.status === "succeeded" && reply === "voice") {
    // The stream ends with the job; a job that was over before it began is played whole.
    audio ??= { ...playReply(jobId, null, turn, sentAt) };
    try {
      await audio.done;
      await offerWav(jobId, turn);
    } catch (error) {
      report(error); // the reply text stands; only its audio is missing
    }
  }
  return job;
}

/** Shows a job's events as they come; returns its `done` event's data. */
async function readEvents(jobId, turn, reply, sentAt, onAudio) {
  let audio = null;
  let attempt = null;
  let final = null;
  for await (const event of jobEvents(jobId)) {
    const data = event.data;
    if (event.type === "status") {
      if (data.status === "queued") {
        turn.stage("queued");
        announce(STAGE_STATUS.queued);
      }
      if (attempt !== null && data.attempt !== undefined && data.attempt !== attempt) {
        turn.restart(); // the worker was lost: the next attempt says it all again
      }
      attempt = data.attempt ?? attempt;
    } else if (event.type === "stage") {
      turn.stage(data.stage);
      announce(STAGE_STATUS[data.stage] || data.stage);
    } else if (event.type === "transcript") {
      turn.transcript(data.text);
    } else if (event.type === "delta") {
      turn.appendReply(data.text);
    } else if (event.type === "speech" && reply === "voice" && audio?.attempt !== data.attempt) {
      // The first sentence is ready: play from now on, as the rest is spoken.
      audio?.controller.abort();
      audio = { attempt: data.attempt, ...playReply(jobId, data.rate, turn, sentAt) };
      onAudio(audio);
    } else if (event.type === "done") {
      final = data;
    }
  }
  return final;
}

/** Asks one question, typed (`{text}`) or spoken (`{wav, seconds}`), and shows the answer. */
async function ask(prompt) {
  clearAlert();
  player?.stop();
  const reply = chosenReply();
  const turn = new Turn(prompt, reply);
  page.empty.hidden = true;
  page.turns.append(turn.element);
  turn.element.scrollIntoView({ block: "end" });
  setBusy(true);
  announce("Sending…");
  const sentAt = performance.now();
  let job;
  try {
    job = await submit(prompt, reply);
  } catch (error) {
    // Refused: no turn was made. A typed question goes back in the box, to be mended.
    turn.element.remove();
    page.empty.hidden = page.turns.children.length > 0;
    if (prompt.text !== undefined && !page.prompt.value) {
      page.prompt.value = prompt.text;
    }
    report(error);
    setBusy(false);
    return;
  }
  try {
    turn.jobId = job.id;
    turn.stage("queued");
    asking = { jobId: job.id, stopped: false };
    page.stop.hidden = false;
    const ended = await follow(job.id, turn, reply, sentAt);
    turn.finish(ended);
    if (ended.status === "succeeded") {
      announce("The reply is complete.");
    } else if (ended.status === "canceled" && asking.stopped) {
      turn.stopped(STOPPED);
      announce(STOPPED);
    } else {
      const code = ended.error?.code || ended.status;
      const message = JOB_FAILURES[code] || `The question could not be answered: ${code}.`;
      turn.fail(message);
      showAlert(message, code);
      announce("");
    }
  } catch (error) {
    report(error, turn);
  } finally {
    asking = null;
    page.stop.hidden = true;
    setBusy(false);
    turn.element.scrollIntoView({ block: "end" });
  }
}

/** Stops the job being answered: the service ends it `canceled`, keeping what it said. */
async function stop() {
  const current = asking;
  if (current === null || current.stopped) {
    return;
  }
  current.stopped = true;
  player?.stop();
  announce("Stopping…");
  try {
    await cancelJob(current.jobId);
  } catch (error) {
    current.stopped = false;
    report(error);
  }
}

page.stop.addEventListener("click", () => stop());

// Hold to talk ------------------------------------------------------------------------------

function startTalking() {
  if (talking !== null) {
    return;
  }
  if (busy) {
    announce("Wait for the reply to finish before asking again.");
    return;
  }
  clearAlert();
  player?.stop();
  audioContext();
  const startedAt = performance.now();
  page.talk.setAttribute("aria-pressed", "true");
  page.talk.classList.add("recording");
  page.talkLabel.textContent = "Recording: let go to send";
  announce("Recording…");
  const timer = setInterval(() => {
    page.talkTimer.textContent = `${((performance.now() - startedAt) / 1000).toFixed(1)} s`;
  }, 100);
  talking = { started: recorder.start(), timer };
}

/** Ends the recording; `send` false discards it (Escape). */
async function stopTalking(send) {
  const current = talking;
  if (current === null) {
    return;
  }
  talking = null;
  clearInterval(current.timer);
  page.talk.setAttribute("aria-pressed", "false");
  page.talk.classList.remove("recording");
  page.talkLabel.textContent = "Hold to talk";
  page.talkTimer.textContent = "";
  try {
    await current.started;
  } catch (error) {
    report(error);
    return;
  }
  let recording;
  try {
    recording = await recorder.stop();
  } catch (error) {
    report(error);
    return;
  }
  if (!send) {
    announce("Recording discarded.");
    return;
  }
  if (recording.seconds < MIN_RECORDING_SECONDS) {
    showAlert("Hold the button down while you speak, and let go when you are done.");
    announce("");
    return;
  }
  await ask({ wav: recording.wav, seconds: recording.seconds });
}

page.talk.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) {
    return;
  }
  page.talk.setPointerCapture(event.pointerId);
  startTalking();
});
page.talk.addEventListener("pointerup", () => stopTalking(true));
page.talk.addEventListener("pointercancel", () => stopTalking(true));
page.talk.addEventListener("contextmenu", (event) => event.preventDefault()); // touch: long press
page.talk.addEventListener("keydown", (event) => {
  if (TALK_KEYS.has(event.key)) {
    event.preventDefault();
    if (!event.repeat) {
      startTalking();
    }
  } else if (event.key === "Escape") {
    stopTalking(false);
  }
});
page.talk.addEventListener("keyup", (event) => {
  if (TALK_KEYS.has(event.key)) {
    event.preventDefault();
    stopTalking(true);
  }
});
page.talk.addEventListener("blur", () => stopTalking(true));

// Typed questions -----------------------------------------------------------------------------

page.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (busy) {
    announce("Wait for the reply to finish before asking again.");
    return;
  }
  const text = page.prompt.value.trim();
  if (!text) {
    showAlert("Type a question first, or hold the talk button and speak.");
    page.prompt.focus();
    return;
  }
  audioContext(); // a spoken reply may follow: the context is made on this gesture
  page.prompt.value = "";
  ask({ text });
});
page.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    page.form.requestSubmit();
  }
});

// The conversation and the key ---------------------------------------------------------------

page.newConversation.addEventListener("click", () => {
  player?.stop();
  sessionStorage.removeItem(CONVERSATION_STORAGE);
  page.turns.replaceChildren();
  for (const url of wavUrls) {
    URL.revokeObjectURL(url);
  }
  wavUrls = [];
  page.empty.hidden = false;
  clearAlert();
  announce("A new conversation: the earlier turns are forgotten.");
});

function showKeyState() {
  page.keyState.textContent = apiKey()
    ? "A key is set for this tab."
    : "No key set: none is needed while the service runs open on this machine.";
}

page.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(page.keyInput.value.trim());
  page.keyInput.value = "";
  showKeyState();
  clearAlert();
  announce(apiKey() ? "The API key is kept for this tab." : "The API key is forgotten.");
});
page.forgetKey.addEventListener("click", () => {
  setApiKey("");
  showKeyState();
  announce("The API key is forgotten.");
});

/** Shows the turns of the conversation this tab had, after a reload. */
async function restore() {
  const id = sessionStorage.getItem(CONVERSATION_STORAGE);
  if (!id) {
    return;
  }
  try {
    const conversation = await getConversation(id);
    let prompt = null;
    for (const turn of conversation.turns) {
      if (turn.role === "user") {
        prompt = turn.content;
      } else if (turn.role === "assistant" && prompt !== null) {
        page.turns.append(Turn.restored(prompt, turn.content).element);
        page.empty.hidden = true;
        prompt = null;
      }
    }
  } catch (error) {
    if (error.code === "conversation_not_found") {
      sessionStorage.removeItem(CONVERSATION_STORAGE);
    } else {
      report(error);
    }
  }
}

clearAlert();
showKeyState();
restore();
document.documentElement.dataset.ready = "true";
