"""The command line: ``gpuale global``, and friends. A thin layer over the Python API.

``app`` is made in :mod:`._shared` with what every command shares; each command, or
family of commands, is a module of its own that registers itself on it when imported
here, in the order ``--help`` lists them. :func:`main` (the console script ``gpuale =
"gpuale.cli:main"``, and ``python -m gpuale``) runs it in a process of its own.
"""

import atexit
import gc

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


def main() -> None:
    """Run the command line, as the ``gpuale`` console script.

    The interpreter's last garbage collection at exit walks every object numba made when
    it loaded its registries: 0.12-0.16 s of every command, measured on an uncorrected
    ALE of the adults set. When the process ends every output has been written, closed
    and committed (:mod:`gpuale.runfolder`), so ``gc.freeze``, registered before the
    command runs and so called after every exit handler the command registers, lets it
    skip that walk. Only :func:`main` does this: importing :mod:`gpuale.cli` (as the
    tests do) leaves the exit of a host process alone.
    """
    atexit.register(gc.freeze)
    app(prog_name="gpuale")


#: ``app`` runs the commands; ``main`` is the console script; the other names are the
#: helpers the tests reach as ``cli.NAME``.
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
    "main",
    "resolve_device",
]
