"""Jobs: the whole service end to end, the job table, the pipeline, cancel, and webhooks."""
