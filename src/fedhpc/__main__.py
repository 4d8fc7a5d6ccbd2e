"""`python -m fedhpc` is the `fedhpc` command; launchers use this form so no PATH is needed."""

from fedhpc.cli import app

app()
