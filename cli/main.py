"""The `voicechat` command: ask by text or recording, follow a conversation, read or cancel."""

from __future__ import annotations

import argparse
import enum
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cli.progress import Progress
from cli.reply_audio import ReplyAudio
from cli.service import Refused, Service, ServiceError, Unreachable, WaitTimedOut

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 600.0
TERMINAL = ("succeeded", "failed", "canceled")
# How often a job is read when its event stream is refused (503 `server_busy`).
POLL_SECONDS = 1.0
# How long a cancel at Ctrl-C may take before the command exits anyway.
CANCEL_SECONDS = 5.0


class Exit(enum.IntEnum):
    """The exit statuses, as EPILOG tells them."""

    OK = 0
    NO_REPLY = 1
    USAGE = 2
    UNREACHABLE = 3
    REFUSED = 4
    BUSY = 5
    TIMEOUT = 6
    INTERRUPTED = 130


EPILOG = """\
exit statuses: 0 the reply came; 1 the job failed or was canceled; 2 wrong usage; 3 the service
could not be reached; 4 the service refused the request; 5 the service is busy (429/503: try
again later); 6 no reply within --timeout; 130 interrupted (the job is canceled).

environment: VOICECHAT_URL (--url), VOICECHAT_API_KEY (--api-key)."""
RAW = argparse.RawDescriptionHelpFormatter


class Usage(Exception):
    """The command line asks for something that cannot be done; exit status 2."""


# The exit status of each error `main` reports but Refused (BUSY or REFUSED).
ERROR_EXITS = {Usage: Exit.USAGE, Unreachable: Exit.UNREACHABLE, WaitTimedOut: Exit.TIMEOUT}


class Client:
    """One command's service, display and limits."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.service = Service(args.url, args.api_key)
        self.progress = Progress(out, err)
        self.out = out
        self.timeout: float = args.timeout

    def ask(
        self,
        text: str | None,
        audio: Path | None,
        options: dict[str, str],
        save_to: ReplyAudio | None = None,
    ) -> Exit:
        """Submits one prompt and follows its job to the end; Ctrl-C cancels it."""
        self.progress.start()
        deadline = time.monotonic() + self.timeout
        job_id = None
        try:
            job = self.service.submit(text, audio, options)
            job_id = str(job["id"])
            self.progress.note(f"job {job_id} {job['status']}")
            if save_to is not None:
                save_to.start(job_id)
            job = self._follow(job, deadline)
        except KeyboardInterrupt:
            self._stop_showing(save_to)
            self._cancel_at_interrupt(job_id)
            return Exit.INTERRUPTED
        except WaitTimedOut:
            self._stop_showing(save_to)
            self.progress.note(
                f"no reply within {self.timeout:g} s; job {job_id} goes on "
                f"(`voicechat job {job_id}` reads it, `voicechat cancel {job_id}` stops it)"
            )
            return Exit.TIMEOUT
        return self._report(job, save_to)

    def _stop_showing(self, save_to: ReplyAudio | None) -> None:
        self.progress.end_line()
        self.progress.done()
        if save_to is not None:
            save_to.discard()

    def _follow(self, job: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Shows the job's stages and streams its reply text until it ends; returns it."""
        job_id = str(job["id"])
        self.progress.stage(str(job.get("stage") or job["status"]))
        try:
            events = self.service.events(job_id, deadline)
            for event in events:
                if event.type == "stage":
                    self.progress.stage(str(event.data["stage"]))
                elif event.type == "status" and event.data.get("status") == "queued":
                    self.progress.restart_text()
                    self.progress.note(
                        f"attempt {event.data.get('attempt')} was lost; queued again"
                    )
                    self.progress.stage("queued")
                elif event.type == "transcript":
                    self.progress.note(f"heard: {event.data['text']}")
                elif event.type == "delta":
                    self.progress.text(str(event.data["text"]))
                elif event.type == "done" and "result" in event.data:
                    return dict(event.data)  # the job as it ended
        except Refused as refused:
            if refused.status != 503:
                raise
            return self._poll(job_id, deadline)  # no place for one more event stream: poll
        return dict(self.service.job(job_id))

    def _poll(self, job_id: str, deadline: float) -> dict[str, Any]:
        """Reads the job every POLL_SECONDS until it ends, showing its stage changes."""
        shown = ""
        while True:
            job = dict(self.service.job(job_id))
            if job["status"] in TERMINAL:
                return job
            stage = str(job.get("stage") or job["status"])
            if stage != shown:
                self.progress.stage(stage)
                shown = stage
            if time.monotonic() > deadline:
                raise WaitTimedOut(job_id)
            time.sleep(POLL_SECONDS)

    def _report(self, job: dict[str, Any], save_to: ReplyAudio | None) -> Exit:
        """Prints the ended job's reply (or why there is none) and saves its audio."""
        result = job.get("result") or {}
        if job["status"] != "succeeded":
            self._stop_showing(save_to)
            error = job.get("error") or {}
            said = (f"job {job['id']} {job['status']}", error.get("code"), error.get("message"))
            self.progress.note(": ".join(str(part) for part in said if part))
            return Exit.NO_REPLY
        self.progress.final(str(result.get("text") or ""))
        if save_to is not None:
            save_to.finish(job)
            self.progress.note(f"reply audio saved to {save_to.path}")
        elif result.get("audio_url"):
            self.progress.note(f"reply audio: {self.service.url}{result['audio_url']}")
        return Exit.OK

    def _cancel_at_interrupt(self, job_id: str | None) -> None:
        if job_id is None:
            self.progress.note("interrupted before the job was made")
            return
        try:
            job = self.service.cancel(job_id, read_seconds=CANCEL_SECONDS)
            # Still running (202): its worker stops at its next word, sentence or stage.
            stopping = "" if job["status"] == "canceled" else " (its worker is stopping)"
            self.progress.note(f"interrupted: job {job_id} canceled{stopping}")
        except Refused as refused:  # e.g. 409 `job_finished`: it ended meanwhile
            self.progress.note(f"interrupted: job {job_id} not canceled: {refused}")
        except (ServiceError, KeyboardInterrupt):
            self.progress.note(f"interrupted: job {job_id} may still run")


def _options(args: argparse.Namespace) -> dict[str, str]:
    options = {"reply": args.reply or ("voice" if args.output else "text")}
    if args.voice:
        options["voice"] = args.voice
    if args.max_tokens is not None:
        options["max_tokens"] = str(args.max_tokens)
    return options


def run_ask(client: Client, args: argparse.Namespace) -> Exit:
    """`voicechat ask`: one prompt, one reply."""
    if (args.text is None) == (args.audio is None):
        raise Usage("give the prompt as text or as --audio FILE (one of them)")
    if args.output and args.reply == "text":
        raise Usage("-o saves a spoken reply: leave out --reply text")
    if args.audio is not None and not os.access(args.audio, os.R_OK):
        raise Usage(f"cannot read {args.audio}")
    options = _options(args)
    save_to = None
    if args.output:
        try:
            save_to = ReplyAudio(client.service, args.output, args.force, client.timeout)
        except FileExistsError:
            raise Usage(f"{args.output} exists: --force overwrites it") from None
        except OSError as error:
            raise Usage(f"cannot write {args.output}: {error.strerror}") from None
    try:
        if args.new_conversation:
            new = args.conversation = client.service.create_conversation()
            client.progress.note(f"conversation {new} (continue it with --conversation {new})")
        if args.conversation:
            options["conversation_id"] = str(args.conversation)
        return client.ask(args.text, args.audio, options, save_to)
    except BaseException:
        if save_to is not None:
            save_to.discard()
        raise


def run_chat(client: Client, args: argparse.Namespace) -> Exit:
    """`voicechat chat`: typed prompts in one conversation until end of input."""
    conversation_id = args.conversation or client.service.create_conversation()
    client.progress.note(
        f"conversation {conversation_id}; an empty line or end of input (Ctrl-D) ends it"
    )
    options = {**_options(args), "conversation_id": conversation_id}
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return Exit.OK
        except KeyboardInterrupt:
            return Exit.INTERRUPTED
        if not line.strip():
            return Exit.OK
        try:
            status = client.ask(line, None, options)
        except Refused as refused:
            if refused.busy or refused.status in (401, 403, 404, 421):
                raise
            client.progress.note(str(refused))  # this prompt only (too long, ...)
            continue
        if status in (Exit.INTERRUPTED, Exit.TIMEOUT):
            return status


def run_job(client: Client, args: argparse.Namespace) -> Exit:
    """`voicechat job ID`: the job as JSON."""
    json.dump(client.service.job(args.job_id), client.out, indent=2)
    client.out.write("\n")
    return Exit.OK


def run_cancel(client: Client, args: argparse.Namespace) -> Exit:
    """`voicechat cancel ID`: cancels a job; prints its status."""
    job = client.service.cancel(args.job_id)
    stopping = " (its worker is stopping it)" if job["status"] == "running" else ""
    client.out.write(f"{job['id']} {job['status']}{stopping}\n")
    return Exit.OK


def _prompt_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--reply", choices=("text", "voice"), help="default: text")
    command.add_argument("--voice", help="one of the service's TTS_VOICES")
    command.add_argument("--max-tokens", type=int, help="the reply's length limit")


def _add_commands(commands: Any) -> None:
    """The subcommands, on `add_subparsers()`'s answer."""

    def command(name: str, about: str, run: Any) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = commands.add_parser(
            name, help=about, description=about, epilog=EPILOG, formatter_class=RAW
        )
        made.set_defaults(run=run)
        return made

    ask = command("ask", "Ask one question, by text or by a recording.", run_ask)
    ask.add_argument("text", nargs="?", help="the question, as text")
    ask.add_argument("--audio", type=Path, help="the question, as a recording (e.g. a WAV)")
    _prompt_options(ask)
    ask.add_argument("-o", "--output", type=Path, help="save the spoken reply (implies voice)")
    ask.add_argument("--force", action="store_true", help="overwrite the -o file")
    following = ask.add_mutually_exclusive_group()
    following.add_argument("--conversation", metavar="ID", help="ask within this conversation")
    following.add_argument(
        "--new-conversation", action="store_true", help="start a conversation (its id is printed)"
    )
    chat = command("chat", "Type questions in one conversation, one a line.", run_chat)
    chat.add_argument("--conversation", metavar="ID", help="continue this conversation")
    _prompt_options(chat)
    chat.set_defaults(output=None)
    command("job", "Show a job as JSON.", run_job).add_argument("job_id", metavar="ID")
    command("cancel", "Cancel a job.", run_cancel).add_argument("job_id", metavar="ID")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="voicechat",
        description="Ask the voice chat service by text or by a recording; the reply is "
        "printed (and its speech saved with -o).",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    top.add_argument(
        "--url",
        default=os.environ.get("VOICECHAT_URL", DEFAULT_URL),
        help="the service (VOICECHAT_URL; default %(default)s)",
    )
    top.add_argument(
        "--api-key",
        default=os.environ.get("VOICECHAT_API_KEY"),
        help="an API key (better in VOICECHAT_API_KEY: a command line shows in `ps`; none for "
        "a service running open)",
    )
    top.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a reply (default %(default)g)",
    )
    _add_commands(top.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return top


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns its exit status."""
    # A shell may start a command with SIGINT ignored; Ctrl-C must reach the cancel.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser().parse_args(argv)
    err = sys.stderr
    try:
        return int(args.run(Client(args, sys.stdout, err), args))
    except (Usage, Unreachable, Refused, WaitTimedOut) as error:
        err.write(f"voicechat: {error}\n")
        if isinstance(error, Refused):
            return Exit.BUSY if error.busy else Exit.REFUSED
        return ERROR_EXITS[type(error)]
    except KeyboardInterrupt:
        err.write("\nvoicechat: interrupted\n")
        return Exit.INTERRUPTED
