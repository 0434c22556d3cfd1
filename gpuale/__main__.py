"""``python -m gpuale``: the command line."""

from gpuale.cli import app

app(prog_name="gpuale")
