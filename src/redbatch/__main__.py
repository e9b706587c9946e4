"""python -m redbatch: the command line."""

from redbatch.cli import app

app()
