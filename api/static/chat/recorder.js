// Hold-to-talk recording: the microphone through an AudioWorklet (capture-worklet.js), kept as
// float samples while the button is held, then resampled and encoded as a 16 kHz mono WAV.
// The microphone is opened for each recording and closed after it, so the browser shows it in
// use only while the person is speaking.

import { UPLOAD_RATE, encodeWav, resample } from "./wav.js";

const WORKLET_URL = new URL("./capture-worklet.js", import.meta.url);
// How long to wait for the worklet's last batch after "stop" before using what arrived.
const FLUSH_TIMEOUT_MS = 1000;

/** A recording that could not be made, with a message for the person at the page. */
export class RecordingError extends Error {}

function concatenate(chunks) {
  const total = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const joined = new Float32Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    joined.set(chunk, offset);
    offset += chunk.length;
  }
  return joined;
}

async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new RecordingError(
      "This browser offers no microphone to this page: open it over HTTPS, or at " +
        "http://127.0.0.1 or http://localhost on the service's own machine.",
    );
  }
  try {
    // Noise suppression off: it can clip the quiet starts of words, which Whisper would rather hear.
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false },
    });
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new RecordingError(
        "The microphone was not allowed. Allow it for this page in the browser's site " +
          "settings, or type your question instead.",
      );
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      throw new RecordingError("No microphone was found. Connect one, or type your question.");
    }
    throw new RecordingError(`The microphone could not be opened (${error.name}).`);
  }
}

export class Recorder {
  /** @param {AudioContext} context the page's audio context (made on a user gesture) */
  constructor(context) {
    this.context = context;
    this.moduleLoaded = null;
    this.session = null;
  }

  /** Opens the microphone and starts keeping its samples. */
  async start() {
    this.moduleLoaded ??= this.context.audioWorklet.addModule(WORKLET_URL);
    await this.moduleLoaded;
    const stream = await openMicrophone();
    await this.context.resume();
    const source = this.context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(this.context, "voicechat-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCountMode: "explicit",
      channelCount: 1,
    });
    // Connected through a silent gain to the output, so every browser keeps pulling it.
    const mute = this.context.createGain();
    mute.gain.value = 0;
    const chunks = [];
    const flushed = new Promise((resolve) => {
      node.port.onmessage = (message) => {
        if (message.data.done) {
          resolve();
        } else {
          chunks.push(message.data.samples);
        }
      };
    });
    source.connect(node).connect(mute).connect(this.context.destination);
    this.session = { stream, source, node, mute, chunks, flushed, startedAt: performance.now() };
  }

  /** Whether a recording is under way. */
  get recording() {
    return this.session !== null;
  }

  /**
   * Stops, closes the microphone and returns the recording.
   * @returns {Promise<{wav: Blob, seconds: number}>}
   */
  async stop() {
    const session = this.session;
    if (session === null) {
      throw new RecordingError("Nothing was recorded.");
    }
    this.session = null;
    session.node.port.postMessage("stop");
    await Promise.race([
      session.flushed,
      new Promise((resolve) => setTimeout(resolve, FLUSH_TIMEOUT_MS)),
    ]);
    session.source.disconnect();
    session.node.disconnect();
    session.mute.disconnect();
    for (const track of session.stream.getTracks()) {
      track.stop();
    }
    const samples = resample(concatenate(session.chunks), this.context.sampleRate, UPLOAD_RATE);
    return { wav: encodeWav(samples, UPLOAD_RATE), seconds: samples.length / UPLOAD_RATE };
  }
}
