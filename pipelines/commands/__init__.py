"""One module per `ganpipe` sub-command (see pipelines/cli.py)."""
