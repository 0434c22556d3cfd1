"""``python -m gpuale``: the command line."""

from gpuale.cli import main

main()
