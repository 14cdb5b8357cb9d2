"""`python -m polymodal ...` runs the command line."""

from polymodal.cli import app

app(prog_name="polymodal")
