"""Study files: dependency order, reuse of finished analyses, and clear errors."""

from __future__ import annotations

import json
import textwrap

import pytest

from gpuale.study import load_study, run_study

FOCI = """// Reference=MNI
// A
// Subjects=20
-40\t20\t10
38\t22\t8

// B
// Subjects=12
-38\t18\t12

// C
// Subjects=30
-40\t22\t8
0\t-60\t30

// D
// Subjects=25
40\t-60\t30
"""

STUDY = """
[study]
iterations = 5
workers = 1
min_volume = 0
device = "cpu"

[inputs]
data = "foci.txt"

[analyses.common]
type = "conjunction"
of = ["left", "right"]

[analyses.left_vs_right]
type = "contrast"
a = "left"
b = "right"

[analyses.left]
type = "global"
input = "data"
where = "id in [A, B]"

[analyses.right]
type = "global"
input = "data"
where = "id in [C, D]"
"""


def _write(tmp_path, study=STUDY):
    (tmp_path / "foci.txt").write_text(FOCI)
    path = tmp_path / "study.toml"
    path.write_text(textwrap.dedent(study))
    return path


def test_runs_in_dependency_order_and_reuses_finished_analyses(tmp_path):
    study = load_study(_write(tmp_path))
    order = [a.name for a in study.order()]
    assert order.index("left") < order.index("left_vs_right")
    assert order.index("right") < order.index("common")
    out = tmp_path / "out"
    entries = run_study(study, out, log=lambda m: None)
    assert {e["name"]: e["status"] for e in entries} == dict.fromkeys(order, "ran")
    for name in order:
        assert (out / name / "run.json").exists()
    index = json.loads((out / "study.json").read_text())
    assert [a["name"] for a in index["analyses"]] == order

    again = run_study(load_study(tmp_path / "study.toml"), out, log=lambda m: None)
    assert {e["status"] for e in again} == {"reused"}

    # Changing one analysis's settings re-runs it and what depends on it, nothing else.
    changed = STUDY.replace('where = "id in [C, D]"', 'where = "id in [C, D]"\nseed = 7')
    third = run_study(load_study(_write(tmp_path, changed)), out, log=lambda m: None)
    status = {e["name"]: e["status"] for e in third}
    assert status == {"left": "reused", "right": "ran", "left_vs_right": "ran",
                      "common": "ran"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace('of = ["left", "right"]', 'of = ["left", "middle"]'),
         "unknown analysis 'middle'"),
        (lambda s: s.replace('input = "data"\nwhere = "id in [A, B]"',
                             'input = "dta"\nwhere = "id in [A, B]"'), "unknown input"),
        (lambda s: s.replace('data = "foci.txt"', 'data = "nowhere.txt"'), "does not exist"),
        (lambda s: s.replace('type = "conjunction"', 'type = "meta"'), "type must be"),
        (lambda s: s + '\n[analyses.loop_a]\ntype = "conjunction"\nof = ["loop_b", "left"]\n'
                       '[analyses.loop_b]\ntype = "conjunction"\nof = ["loop_a", "left"]\n',
         "cycle"),
        (lambda s: s.replace("iterations = 5", "iteration = 5"), "unknown setting"),
        (lambda s: s.replace('a = "left"', 'a = "common"'), "must be a global"),
        (lambda s: s.replace("[analyses.common]", "[analyses.common\n"), "not valid TOML"),
    ],
)
def test_bad_study_files_are_clear_errors(tmp_path, edit, message):
    path = _write(tmp_path, edit(STUDY))
    with pytest.raises(ValueError, match=message) as info:
        load_study(path)
    assert "study.toml" in str(info.value)


def test_bundled_demo_study_is_valid():
    from gpuale.examples import example_path

    study = load_study(example_path("semantic-children-study"))
    assert len(study.analyses) == 11
    assert study.order()[-1].type in ("contrast", "conjunction")
