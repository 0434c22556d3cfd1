"""Readable --help: option value names (`--iters N`), arguments as click names them."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _Argument(TyperArgument):
    """A positional argument named as click names it: ``INPUTS...``, ``[OUT]``.

    Typer's own spelling (``{inputs}...`` in the usage line, ``<list[str]>`` beside it)
    reads as a template rather than a name.
    """

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else self.name.upper()

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx) -> str | None:
        return None  # its name says what it is; its help says what it takes


class _Flag(TyperOption):
    """An on/off option (``--force``, ``--report/--no-report``, ``--help``): no ``<bool>``
    beside it, as it takes no value."""

    def display_type_rich(self, ctx) -> str | None:
        return None


class _ReadableHelp:
    """A command (or the app) whose help is read literally and whose parameters are named
    readably.

    Help strings are escaped once here: under ``rich_markup_mode="rich"`` a ``[study]`` or
    ``'gpuale[gpu]'`` in them would otherwise be taken for a style tag and vanish.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help = escape(self.help) if self.help else self.help
        self.short_help = escape(self.short_help) if self.short_help else self.short_help
        for param in self.params:
            _readable(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        return _readable(option) if option is not None else None

    def format_help(self, ctx, formatter) -> None:
        # Typer draws the options with rich tables it makes itself: for the time of this
        # help, they are tables that keep option names whole (see _OptionsTable).
        import typer.rich_utils

        made = typer.rich_utils.Table
        typer.rich_utils.Table = _OptionsTable
        try:
            super().format_help(ctx, formatter)
        finally:
            typer.rich_utils.Table = made


class _OptionsTable(Table):
    """A help table that keeps option names whole (``--experiment-column``, not
    ``--experiment-co…``, a name that cannot be typed) at 80 columns.

    Typer gives each option's names four columns of their own (long, short, and the
    ``--no-`` forms), mostly empty, so that at 80 columns rich shrinks them all. Here they
    are one column, ``--report/--no-report`` or ``--out, -o``, that never wraps or
    shrinks; the help text wraps instead (and a word longer than its column folds).
    """

    def add_row(self, *renderables, **kwargs) -> None:
        if len(renderables) not in (6, 7):  # not typer's options layout: as it is
            super().add_row(*renderables, **kwargs)
            return
        required = renderables[:len(renderables) - 6]
        long, short, negative, negative_short, *rest = renderables[len(required):]
        names = Text()
        for separator, part in (("", long), ("/", negative), (", ", short),
                                ("/", negative_short)):
            text = part if isinstance(part, Text) else Text(str(part))
            if text.plain:
                names.append(separator if names.plain else "")
                names.append_text(text)
        super().add_row(*required, names, *rest, **kwargs)
        column = self.columns[len(required)]
        column.no_wrap = True
        column.min_width = max(column.min_width or 0, names.cell_len)
        for item in getattr(rest[-1], "renderables", ()):  # the help, as rich Columns
            if isinstance(item, Text):
                item.overflow = "fold"  # a word longer than the column breaks, not cut


class _Command(_ReadableHelp, TyperCommand):
    """A command of the app (see :class:`_ReadableHelp`)."""


class _Group(_ReadableHelp, TyperGroup):
    """The app itself, whose help lists the commands (see :class:`_ReadableHelp`)."""


#: The value of an option, named in its help (``--cluster-p P``) where typer would write
#: its Python type (``<float>``); options not named here are named by their type.
VALUE_NAMES = {
    "out": "DIR", "main_a": "RUN_DIR", "main_b": "RUN_DIR", "mask": "NIFTI",
    "seed": "SEED", "cluster_p": "P", "alpha": "P", "p_threshold": "P", "fdr": "Q",
    "device": "DEVICE", "fwhm": "MM", "min_volume": "MM3", "threshold": "T",
    "where": "EXPRESSION", "where_a": "EXPRESSION", "where_b": "EXPRESSION",
    "against": "REFERENCE", "devices": "A,B", "ale_tol": "TOL", "z_tol": "TOL",
}


#: Typer's labels of Python types in words a user types.
TYPE_NAMES = {"<int>": "N", "<int range>": "N", "<float>": "NUMBER",
              "<float range>": "NUMBER", "<str>": "TEXT", "<path>": "PATH",
              "<bool>": "BOOLEAN"}


class _Valued(TyperOption):
    """An option that takes a value, which its help names (``--cluster-p P``, ``--workers
    N``) where typer would write a Python type (``<float>``, ``<int range>``); choices
    keep theirs (``<MNI|TAL>``), which lists them."""

    def display_type_rich(self, ctx) -> str | None:
        shown = super().display_type_rich(ctx)
        if self.metavar is not None:
            return shown
        return VALUE_NAMES.get(self.name) or TYPE_NAMES.get(shown, shown)


def _readable(param):
    """``param`` itself, its help escaped, and shown as an :class:`_Argument` or a
    :class:`_Flag` where it is one, else as a :class:`_Valued` option (its class changes,
    nothing else)."""
    if getattr(param, "_gpuale_readable", False):
        return param  # the help option is cached by its command: escaped once
    if type(param) is TyperArgument:
        param.__class__ = _Argument
    elif type(param) is TyperOption and getattr(param, "is_flag", False):
        param.__class__ = _Flag
    elif type(param) is TyperOption:
        param.__class__ = _Valued
    if getattr(param, "help", None):
        param.help = escape(param.help)
    param._gpuale_readable = True
    return param


class _Typer(typer.Typer):
    """Every command of the app is a :class:`_Command` (those added later included)."""

    def command(self, name: str | None = None, *, cls=None, **kwargs):
        return super().command(name, cls=cls or _Command, **kwargs)


class _Console(Console):
    """stderr for people and for log files: user text printed literally, lines unbroken
    where the output is not a terminal (a path split at column 80 can not be copied)."""

    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        if soft_wrap is None:
            # The stream itself, not is_terminal: FORCE_COLOR (set by CI systems) makes rich
            # treat a log file as a terminal, 80 columns wide.
            isatty = getattr(self.file, "isatty", None)
            soft_wrap = not (isatty is not None and isatty())
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)
