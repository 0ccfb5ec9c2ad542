// Recorded samples as the WAV the service reads: resampled to 16 kHz mono, 16-bit PCM.

export const UPLOAD_RATE = 16000;
// Zero crossings of the sinc on each side of a resampled point: a sharp enough low-pass that
// nothing above 8 kHz folds back into the speech band when 48 kHz is brought down to 16 kHz.
const ZERO_CROSSINGS = 12;
const HEADER_BYTES = 44;

/**
 * Resamples mono samples with a Blackman-windowed sinc, low-passed below the lower Nyquist.
 * @param {Float32Array} input samples at `fromRate`
 * @param {number} fromRate Hz
 * @param {number} toRate Hz
 * @returns {Float32Array} samples at `toRate`
 */
export function resample(input, fromRate, toRate) {
  if (fromRate === toRate) {
    return input;
  }
  const step = fromRate / toRate; // input samples per output sample
  // The cutoff in cycles per input sample, a little under the lower of the two Nyquists.
  const cutoff = 0.5 * Math.min(1, toRate / fromRate) * 0.94;
  const halfWidth = ZERO_CROSSINGS / (2 * cutoff);
  const output = new Float32Array(Math.floor(input.length / step));
  for (let index = 0; index < output.length; index += 1) {
    const centre = index * step;
    const first = Math.max(0, Math.ceil(centre - halfWidth));
    const last = Math.min(input.length - 1, Math.floor(centre + halfWidth));
    let sum = 0;
    let weights = 0;
    for (let at = first; at <= last; at += 1) {
      const offset = centre - at;
      const x = 2 * cutoff * offset;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const phase = Math.PI * (offset / halfWidth + 1); // 0..2π across the window
      const window = 0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
      const weight = sinc * window;
      sum += input[at] * weight;
      weights += weight;
    }
    output[index] = weights === 0 ? 0 : sum / weights;
  }
  return output;
}

/**
 * Encodes mono samples as a 16-bit PCM WAV.
 * @param {Float32Array} samples in [-1, 1]
 * @param {number} rate Hz
 * @returns {Blob} `audio/wav`
 */
export function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(HEADER_BYTES + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, value) => {
    for (let i = 0; i < value.length; i += 1) {
      view.setUint8(offset + i, value.charCodeAt(i));
    }
  };
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // the fmt chunk's size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i += 1) {
    const clipped = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(HEADER_BYTES + i * 2, Math.round(clipped * 32767), true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}
