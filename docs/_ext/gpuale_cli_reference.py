"""The CLI reference, generated from the Typer app at every build.

``.. gpuale-cli::`` walks the click command tree of :data:`gpuale.cli.app` and writes, per
command, its one-line summary, its ``--help`` exactly as a terminal 100 columns wide shows
it, and an index entry per option. A command or option added to the app appears here
without editing the docs; ``tests/test_docs.py`` checks that every option does.
"""

from __future__ import annotations

import re

COLUMNS = 100
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def command_tree():
    """``[(name, click command)]``: the app itself (name ``""``), then every command in
    the order ``gpuale --help`` lists them, subcommands of a group after it."""
    import typer.main

    from gpuale import cli

    root = typer.main.get_command(cli.app)
    found = [("", root)]

    def walk(group, prefix):
        for name in getattr(group, "list_commands", lambda ctx: [])(None):
            command = group.commands[name]
            full = f"{prefix} {name}".strip()
            found.append((full, command))
            walk(command, full)

    walk(root, "")
    return found


def help_text(name: str) -> str:
    """``gpuale NAME --help`` as a 100-column terminal shows it, without colours."""
    from typer.testing import CliRunner

    from gpuale import cli

    args = [*name.split(), "--help"]
    result = CliRunner().invoke(cli.app, args, prog_name="gpuale",
                                env={"COLUMNS": str(COLUMNS), "NO_COLOR": "1",
                                     "TERM": "dumb"})
    if result.exit_code != 0:
        raise RuntimeError(f"gpuale {name} --help failed: {result.output}")
    return _ANSI.sub("", result.output).rstrip() + "\n"


def option_names(command) -> list[str]:
    """Every option name of a click command (``--out``, ``-o``, ``--no-report``)."""
    return [opt for param in command.params
            for opt in (*param.opts, *getattr(param, "secondary_opts", ()))
            if opt.startswith("-")]


def reference_rst() -> list[str]:
    """The reference as reStructuredText lines."""
    lines: list[str] = []
    for name, command in command_tree():
        title = f"gpuale {name}".strip()
        lines += [f".. _cli-{name.replace(' ', '-') or 'gpuale'}:", "", title,
                  "-" * len(title), ""]
        summary = (command.short_help or (command.help or "").split("\n\n")[0]).strip()
        if summary and name:
            lines += [summary.replace("\\[", "["), ""]
        names = option_names(command)
        if names:
            lines += [".. index:: " + "; ".join(f"{title} {n}" for n in names), ""]
        lines += [".. code-block:: text", ""]
        lines += ["   " + line.rstrip() if line.strip() else "" for line in
                  help_text(name).splitlines()]
        lines += [""]
    return lines


def setup(app):
    # Sphinx and docutils only here: tests/test_docs.py imports this module without them.
    from docutils import nodes
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList
    from sphinx.util.nodes import nested_parse_with_titles

    class GpualeCli(Directive):
        has_content = False

        def run(self):
            container = nodes.section()
            container.document = self.state.document
            nested_parse_with_titles(self.state, StringList(reference_rst(), "gpuale-cli"),
                                     container)
            return container.children

    app.add_directive("gpuale-cli", GpualeCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
