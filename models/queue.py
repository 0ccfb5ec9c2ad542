"""Names both sides agree on: the task the API sends and the queue it goes to."""

RUN_JOB_TASK = "worker.run_job"
JOB_QUEUE = "voicechat"
