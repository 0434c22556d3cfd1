"""The command line: ``gpuale global``, and friends. A thin layer over the Python API.

``app`` (the console script ``gpuale = "gpuale.cli:app"``) is made in :mod:`._shared`
with what every command shares; each command, or family of commands, is a module of its
own that registers itself on it when imported here, in the order ``--help`` lists them.
"""

# isort: off
from gpuale.cli import global_cmd, contrast_cmd, conjunction_cmd, compare_cmd  # noqa: F401
from gpuale.cli import macm_cmd, parcellate_cmd, rerun_cmd, study_cmd  # noqa: F401
# isort: on
from gpuale.cli._help import _Typer
from gpuale.cli._shared import (
    PACKAGE_DIR,
    STUDY_NAMES,
    _Advance,
    _describe,
    _in_cli_words,
    _observed_status,
    _print_warning,
    _user_errors,
    app,
)
from gpuale.engines import resolve_device

#: ``app`` runs the commands; the other names are the helpers the tests reach as
#: ``cli.NAME``.
__all__ = [
    "PACKAGE_DIR",
    "STUDY_NAMES",
    "_Advance",
    "_Typer",
    "_describe",
    "_in_cli_words",
    "_observed_status",
    "_print_warning",
    "_user_errors",
    "app",
    "resolve_device",
]
