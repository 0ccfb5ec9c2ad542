"""Events as they happen: Server-Sent Events, the job event log, streamed speech."""
