"""pipelines: Prefect flows and the `ganpipe` CLI. Composes, schedules, retries, reports; no tensor maths."""
