// The microphone's samples, taken off the audio thread: an AudioWorklet processor that mixes
// each 128-frame block to mono and posts it to the page in batches of about 85 ms (at 48 kHz),
// until the page says "stop"; then it posts what is left and `{ done: true }`.

const BATCH_FRAMES = 4096;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.batch = new Float32Array(BATCH_FRAMES);
    this.filled = 0;
    this.recording = true;
    this.port.onmessage = (message) => {
      if (message.data === "stop" && this.recording) {
        this.recording = false;
        this.flush();
        this.port.postMessage({ done: true });
      }
    };
  }

  flush() {
    if (this.filled > 0) {
      const samples = this.batch.slice(0, this.filled);
      this.port.postMessage({ samples }, [samples.buffer]);
      this.filled = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.recording) {
      return false;
    }
    if (channels && channels.length > 0) {
      const frames = channels[0].length;
      for (let frame = 0; frame < frames; frame += 1) {
        let sum = 0;
        for (const channel of channels) {
          sum += channel[frame];
        }
        this.batch[this.filled] = sum / channels.length;
        this.filled += 1;
        if (this.filled === BATCH_FRAMES) {
          this.flush();
        }
      }
    }
    return true;
  }
}

registerProcessor("voicechat-capture", CaptureProcessor);
