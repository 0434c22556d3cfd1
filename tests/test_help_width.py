"""`--help` at 80 columns shows every option name whole (`--experiment-column`, not
`--experiment-co…`), and cuts no word of help short."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from gpuale import cli

runner = CliRunner()
COMMANDS = ["", *(c.name or c.callback.__name__ for c in cli.app.registered_commands)]


def _help(command: str, columns: int) -> str:
    args = [command, "--help"] if command else ["--help"]
    result = runner.invoke(cli.app, args, env={"COLUMNS": str(columns)}, prog_name="gpuale")
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)


def _names(command: str) -> list[str]:
    import typer.main

    group = typer.main.get_command(cli.app)
    params = group.params if not command else group.commands[command].params
    return [name for p in params for name in (*p.opts, *p.secondary_opts) if
            name.startswith("-")] + ["--help"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_name_shows_whole_at_80_columns(command):
    text = _help(command, 80)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    words = set(re.findall(r"--?[\w-]+", text))
    missing = [name for name in _names(command) if name not in words]
    assert not missing, f"gpuale {command} --help at 80 columns: {missing} not whole"


def test_names_of_a_flag_share_one_column():
    text = _help("global", 80)
    assert "--report/--no-report" in text and "--out, -o" in text
    assert "--experiment-column" in text and "--allow-duplicates" in text
