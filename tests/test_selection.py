"""Subsets by metadata: the expression language, median splits and their errors."""

import numpy as np
import pytest

from gpuale.dataset import Dataset, Experiment
from gpuale.selection import columns, median_split, select


@pytest.fixture
def dataset():
    rows = [
        ("a", "knowledge", 9.5, "english"),
        ("b", "knowledge", 12.0, "german"),
        ("c", "objects", 7.0, "english"),
        ("d", "relatedness", None, "dutch"),
        ("e", "objects", 15.5, "german"),
    ]
    return Dataset(tuple(
        Experiment(id=i, label=i, n_subjects=10 + k, foci=np.zeros((1, 3)),
                   metadata={"task_type": task, "age_mean": age, "language": lang})
        for k, (i, task, age, lang) in enumerate(rows)
    ))


@pytest.mark.parametrize(
    "where, ids",
    [
        ("task_type == knowledge", "ab"),
        ("task_type == 'Knowledge'", "ab"),  # case-insensitive words
        ("task_type != knowledge", "cde"),
        ("age_mean >= 9.5", "abe"),  # a missing age never satisfies a comparison
        ("age_mean < 10 or language == dutch", "acd"),
        ("language in [english, dutch] and not task_type == objects", "ad"),
        ("language not in (german,)", "acd"),
        ("n_subjects > 11", "cde"),
        ("(task_type == objects) and age_mean > 10", "e"),
    ],
)
def test_select(dataset, where, ids):
    assert "".join(select(dataset, where).ids) == ids


def test_unknown_column_lists_the_columns(dataset):
    with pytest.raises(ValueError, match="unknown column 'tsak'.*task_type"):
        select(dataset, "tsak == knowledge")


def test_selecting_nothing_is_an_error(dataset):
    with pytest.raises(ValueError, match="selects no experiment.*age_mean"):
        select(dataset, "task_type == music")


@pytest.mark.parametrize("where", ["task_type ==", "__import__('os')", "age_mean + 1",
                                   "knowledge == task_type", "age_mean > knowledge"])
def test_malformed_expressions_are_errors(dataset, where):
    with pytest.raises(ValueError):
        select(dataset, where)


def test_median_split(dataset):
    with_age = select(dataset, "age_mean >= 0")
    low, high = median_split(with_age, "age_mean")
    assert low.ids == ["a", "c"] and high.ids == ["b", "e"]  # median 10.75


def test_median_split_names_experiments_without_a_value(dataset):
    with pytest.raises(ValueError, match="'d'|d;|: d"):
        median_split(dataset, "age_mean")


def test_columns_include_builtins_and_metadata(dataset):
    assert {"n_subjects", "space", "task_type", "age_mean"} <= set(columns(dataset))
