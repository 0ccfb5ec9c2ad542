// One turn of the conversation on the page: what was asked (typed, or spoken and then its
// transcript), the job's progress by stage, the reply as it is generated, and its audio.

const STAGE_NAMES = {
  queued: "Queued",
  transcribing: "Transcribing",
  generating: "Generating",
  synthesizing: "Synthesizing",
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export class Turn {
  /**
   * @param {{text?: string, seconds?: number}} prompt typed text, or a recording's length
   * @param {"text"|"voice"} reply
   */
  constructor(prompt, reply) {
    this.spoken = prompt.text === undefined;
    this.reply = reply;
    this.element = element("li", "turn");
    this.element.dataset.state = "submitting";
    this.element.setAttribute("aria-busy", "true");

    const you = element("div", "message you");
    const speaker = element("p", "speaker", "You");
    if (this.spoken) {
      speaker.append(" ", element("span", "how", `(spoken, ${prompt.seconds.toFixed(1)} s)`));
    }
    this.promptText = element("p", "text prompt-text", this.spoken ? "…" : prompt.text);
    you.append(speaker, this.promptText);

    const assistant = element("div", "message assistant");
    this.stages = element("ol", "stages");
    this.stages.setAttribute("aria-label", "Progress");
    const stages = ["queued", ...(this.spoken ? ["transcribing"] : []), "generating"];
    if (reply === "voice") {
      stages.push("synthesizing");
    }
    for (const stage of stages) {
      const item = element("li", "", STAGE_NAMES[stage]);
      item.dataset.stage = stage;
      this.stages.append(item);
    }
    this.replyText = element("p", "text reply-text");
    this.note = element("p", "note");
    this.audioInfo = element("p", "audio-info");
    this.audioInfo.dataset.audioBytes = "0";
    this.audioInfo.dataset.audioSeconds = "0";
    this.audioInfo.hidden = true;
    this.files = element("p", "audio-files");
    this.files.hidden = true;
    assistant.append(
      element("p", "speaker", "Assistant"),
      this.stages,
      this.replyText,
      this.note,
      this.audioInfo,
      this.files,
    );
    this.element.append(you, assistant);
  }

  /** A finished turn read back from the server's conversation. */
  static restored(prompt, replyText) {
    const turn = new Turn({ text: prompt }, "text");
    turn.stages.remove();
    turn.replyText.textContent = replyText;
    turn.element.dataset.state = "succeeded";
    turn.element.setAttribute("aria-busy", "false");
    return turn;
  }

  set jobId(value) {
    this.element.dataset.jobId = value;
  }

  /** Marks `stage` current, and every stage before it done. */
  stage(stage) {
    this.element.dataset.state = "running";
    // What the job went through, in order, for whoever checks the page (a test, a person).
    const seen = (this.element.dataset.stagesSeen || "").split(" ").filter(Boolean);
    if (seen[seen.length - 1] !== stage) {
      this.element.dataset.stagesSeen = [...seen, stage].join(" ");
    }
    let reached = false;
    for (const item of [...this.stages.children].reverse()) {
      if (item.dataset.stage === stage) {
        reached = true;
        item.setAttribute("aria-current", "step");
        item.className = "current";
      } else {
        item.removeAttribute("aria-current");
        item.className = reached ? "done" : "";
      }
    }
  }

  /** A new attempt of the job starts over: what the lost one said is dropped. */
  restart() {
    this.replyText.textContent = "";
  }

  transcript(text) {
    this.promptText.textContent = text;
  }

  appendReply(text) {
    this.replyText.textContent += text;
    this.element.dataset.deltas = String(Number(this.element.dataset.deltas || 0) + 1);
  }

  /** Shows how much reply audio has arrived and been scheduled, and when the first came. */
  audio(bytes, seconds, firstAfter) {
    this.audioInfo.hidden = false;
    this.audioInfo.dataset.audioBytes = String(bytes);
    this.audioInfo.dataset.audioSeconds = seconds.toFixed(3);
    this.audioInfo.textContent =
      `Reply audio: ${seconds.toFixed(1)} s, ` +
      `the first sound ${firstAfter.toFixed(1)} s after sending.`;
  }

  /** Counts the reply audio played to its end so far. */
  played(seconds) {
    this.audioInfo.dataset.audioPlayed = seconds.toFixed(3);
  }

  /** Offers the finished reply's WAV to replay and to save. */
  offerWav(url, jobId) {
    const player = element("audio");
    player.controls = true;
    player.preload = "metadata";
    player.src = url;
    player.setAttribute("aria-label", "The spoken reply");
    const link = element("a", "download", "Download the reply (WAV)");
    link.href = url;
    link.download = `reply-${jobId}.wav`;
    this.files.replaceChildren(player, " ", link);
    this.files.hidden = false;
  }

  /** The job ended: its final texts, and its state for the page and its styles. */
  finish(job) {
    this.element.dataset.state = job.status;
    this.element.setAttribute("aria-busy", "false");
    for (const item of this.stages.children) {
      item.removeAttribute("aria-current");
      item.className = job.status === "succeeded" ? "done" : item.className;
    }
    const result = job.result || {};
    if (result.transcript) {
      this.promptText.textContent = result.transcript;
    }
    if (result.text) {
      this.replyText.textContent = result.text;
    }
    if (job.status === "succeeded" && job.timings && job.timings.total_s !== null) {
      this.note.textContent = `Answered in ${job.timings.total_s.toFixed(1)} s.`;
    }
  }

  /** The person stopped the turn: what was said until then stands, and `message` says so. */
  stopped(message) {
    this.element.dataset.stopped = "true";
    for (const item of this.stages.children) {
      item.className = item.className === "current" ? "stopped" : item.className;
    }
    this.note.textContent = message;
  }

  /** The turn could not be answered: `message` says why. */
  fail(message) {
    this.element.dataset.state = "failed";
    this.element.setAttribute("aria-busy", "false");
    for (const item of this.stages.children) {
      item.removeAttribute("aria-current");
      item.className = item.className === "current" ? "failed" : item.className;
    }
    if (this.spoken && this.promptText.textContent === "…") {
      this.promptText.textContent = "(not transcribed)";
    }
    this.note.textContent = message;
    this.note.className = "note failure";
  }
}
