// The spoken reply played as it arrives: each piece of PCM becomes an AudioBuffer scheduled
// right after the one before, so sentences play back to back with no gap and no wait for the
// whole reply.

// A first piece starts this far ahead of now, so that it is never scheduled in the past.
const LEAD_SECONDS = 0.05;

export class ReplyPlayer {
  /** @param {AudioContext} context */
  constructor(context) {
    this.context = context;
    this.next = 0;
    this.sources = new Set();
    this.seconds = 0; // of audio scheduled so far
    this.played = 0; // of audio played to its end
    this.onplayed = null; // called with `played` as each piece ends
  }

  /**
   * Plays samples after everything scheduled before.
   * @param {Float32Array} samples mono, in [-1, 1]
   * @param {number} rate their sample rate (the context resamples to its own)
   */
  play(samples, rate) {
    const buffer = this.context.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const start = Math.max(this.next, this.context.currentTime + LEAD_SECONDS);
    source.start(start);
    source.onended = () => {
      if (this.sources.delete(source)) {
        this.played += buffer.duration;
        this.onplayed?.(this.played);
      }
    };
    this.sources.add(source);
    this.next = start + buffer.duration;
    this.seconds += buffer.duration;
  }

  /** Stops whatever is playing or scheduled. */
  stop() {
    const stopping = [...this.sources];
    this.sources.clear(); // before stop(): a stopped piece does not count as played
    for (const source of stopping) {
      source.stop();
    }
    this.next = 0;
  }
}
