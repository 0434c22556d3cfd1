"""Subsets of experiments by their metadata: ``where = "task_type == knowledge"`` in a study.

The expression language is small and safe (parsed with :mod:`ast`, never evaluated):
comparisons ``== != < <= > >=``, membership ``in [a, b]`` / ``not in``, ``and``, ``or``,
``not`` and parentheses. The left side of a comparison is a column; a bare word on the
right is a string (``task_type == knowledge``); numbers compare as numbers.
"""

from __future__ import annotations

import ast
import math
import operator

import numpy as np

from gpuale.dataset import Dataset, Experiment

__all__ = ["columns", "median_split", "referenced_columns", "select"]

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
#: Columns every experiment has, besides its metadata.
BUILTIN_COLUMNS = {
    "id": lambda exp: exp.id,
    "n": lambda exp: exp.n_subjects,
    "n_subjects": lambda exp: exp.n_subjects,
    "n_foci": lambda exp: exp.n_foci,
    "space": lambda exp: exp.space,
}


def columns(dataset: Dataset) -> list[str]:
    """Every column an expression can name."""
    names = set(BUILTIN_COLUMNS)
    for exp in dataset:
        names.update(exp.metadata)
    return sorted(names)


def _value(exp: Experiment, column: str):
    if column in BUILTIN_COLUMNS:
        return BUILTIN_COLUMNS[column](exp)
    return exp.metadata.get(column)


def _literal(node: ast.AST, expression: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)):
        return node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand, expression)
        if isinstance(value, (int, float)):
            return -value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(item, expression) for item in node.elts]
    raise ValueError(
        f"in {expression!r}: {ast.unparse(node)!r} is not a value (use numbers, words or "
        "quoted strings)"
    )


def _compare(op: ast.cmpop, left, right) -> bool:
    if left is None or (isinstance(left, float) and math.isnan(left)):
        return isinstance(op, ast.NotEq) or isinstance(op, ast.NotIn)
    if isinstance(op, (ast.In, ast.NotIn)):
        found = any(_equal(left, item) for item in right)
        return found if isinstance(op, ast.In) else not found
    if isinstance(op, (ast.Eq, ast.NotEq)):
        return _equal(left, right) == isinstance(op, ast.Eq)
    left_num, right_num = _number(left), _number(right)
    if left_num is None or right_num is None:
        raise ValueError(f"cannot order {left!r} and {right!r}: both must be numbers")
    return _COMPARE[type(op)](left_num, right_num)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _equal(left, right) -> bool:
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return a == b
    return str(left).strip().lower() == str(right).strip().lower()


def _compile(node: ast.AST, expression: str, known: set[str]):
    """A predicate on experiments for one node of the expression."""
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, expression, known) for v in node.values]
        combine = all if isinstance(node.op, ast.And) else any
        return lambda exp: combine(part(exp) for part in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, expression, known)
        return lambda exp: not inner(exp)
    if isinstance(node, ast.Compare):
        if not isinstance(node.left, ast.Name):
            raise ValueError(
                f"in {expression!r}: the left side of {ast.unparse(node)!r} must be a column"
            )
        column = node.left.id
        if column not in known:
            raise ValueError(
                f"in {expression!r}: unknown column {column!r}; columns are "
                f"{', '.join(sorted(known))}"
            )
        steps = []
        left_name = column
        for op, comparator in zip(node.ops, node.comparators):
            if type(op) not in _COMPARE and not isinstance(op, (ast.In, ast.NotIn)):
                raise ValueError(f"in {expression!r}: operator not supported")
            value = _literal(comparator, expression)
            if isinstance(op, (ast.In, ast.NotIn)) and not isinstance(value, list):
                raise ValueError(f"in {expression!r}: 'in' needs a list, e.g. [a, b]")
            steps.append((op, value))

        def predicate(exp, steps=steps, column=left_name):
            return all(_compare(op, _value(exp, column), value) for op, value in steps)

        return predicate
    raise ValueError(
        f"{expression!r} is not a selection: use comparisons such as "
        "'task_type == knowledge', 'age_mean >= 10', 'language in [english, german]' "
        "joined by and/or"
    )


#: The deepest nesting of ``not``, ``and``/``or`` and comparisons a selection may have;
#: each level is a Python call when it is compiled and evaluated, so a deeper one (``not
#: not not ...`` thousands of times) would end in a RecursionError.
MAX_SELECTION_DEPTH = 100


def _parse(where: str) -> ast.Expression:
    """The expression's tree, or a ValueError (never a SyntaxError or RecursionError)."""
    try:
        tree = ast.parse(where.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        raise ValueError(
            f"{_shown(where)} is not a valid selection; example: 'task_type == knowledge and "
            "age_mean >= 10'"
        ) from None
    # Depth first with an explicit stack: measuring a deep tree must not recurse either.
    stack = [(tree.body, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SELECTION_DEPTH:
            raise ValueError(
                f"{_shown(where)} is nested more than {MAX_SELECTION_DEPTH} levels deep "
                "(not, and/or, parentheses); write it with fewer levels")
        # A level is an operator (not, and/or, a comparison); its operands are the next.
        deeper = depth + isinstance(node, ast.BoolOp | ast.UnaryOp | ast.Compare)
        stack.extend((child, deeper) for child in ast.iter_child_nodes(node))
    return tree


def _shown(where: str) -> str:
    """The expression in a message: whole where short, else its start and its length."""
    if len(where) <= 200:
        return repr(where)
    return f"the selection {where[:60]!r}... ({len(where):,} characters)"


def referenced_columns(where: str) -> set[str]:
    """The columns an expression compares, so that a reader can load only those of a
    large input (a Neurosynth release's term features); a malformed expression names
    none here and is reported by :func:`select`."""
    try:
        tree = ast.parse(where.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        return set()
    return {
        node.left.id for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
    }


def select(dataset: Dataset, where: str) -> Dataset:
    """The experiments for which ``where`` holds, in the dataset's order.

    Parameters
    ----------
    dataset : Dataset
        The experiments to select from.
    where : str
        A selection over experiment metadata: comparisons (``== != < <= > >=``),
        ``in [a, b]``, ``and``, ``or``, ``not`` and parentheses, e.g.
        ``"task_type == knowledge and age_mean < 10"``.

    Returns
    -------
    Dataset
        The selected experiments.

    Raises
    ------
    ValueError
        For a malformed expression, an unknown column (the message lists the columns), or
        an expression that selects no experiment.
    """
    tree = _parse(where)
    known = set(columns(dataset))
    # A table column that varies within an experiment is kept per focus, not as metadata.
    per_focus = {name for exp in dataset for name in exp.focus_attributes} - known
    for column in sorted(referenced_columns(where) & per_focus):
        raise ValueError(
            f"in {where!r}: {column!r} varies within experiments (a focus attribute, one "
            "value per focus); a selection chooses whole experiments by columns that are "
            "the same on every row of an experiment"
        )
    predicate = _compile(tree.body, where, known)
    chosen = tuple(exp for exp in dataset if predicate(exp))
    if not chosen:
        raise ValueError(
            f"{where!r} selects no experiment of {len(dataset)}; columns are "
            f"{', '.join(columns(dataset))}"
        )
    return Dataset(chosen)


def median_split(dataset: Dataset, column: str) -> tuple[Dataset, Dataset]:
    """Experiments at or below the median of a numeric column, and those above it.

    Parameters
    ----------
    dataset : Dataset
        The experiments to split.
    column : str
        A numeric metadata column every experiment has a number in.

    Returns
    -------
    low, high : Dataset
        The experiments at or below the median, and those above it.

    Raises
    ------
    ValueError
        If the column is unknown, or some experiment has no number in it (they are
        named; nothing is silently left out).
    """
    known = columns(dataset)
    if column not in known:
        raise ValueError(f"unknown column {column!r}; columns are {', '.join(known)}")
    values = [_number(_value(exp, column)) for exp in dataset]
    missing = [exp.id for exp, v in zip(dataset, values) if v is None or math.isnan(v)]
    if missing:
        raise ValueError(
            f"{len(missing)} experiment(s) have no number in {column!r}: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; select them "
            "out first (a `where` selection) to split the rest"
        )
    median = float(np.median(values))
    low = tuple(exp for exp, v in zip(dataset, values) if v <= median)
    high = tuple(exp for exp, v in zip(dataset, values) if v > median)
    if not low or not high:
        raise ValueError(f"every experiment has the same {column!r}; nothing to split")
    return Dataset(low), Dataset(high)
