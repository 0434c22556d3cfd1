"""
A study file: several analyses, one folder
==========================================

A study file (TOML) names the inputs and lists the analyses; ``gpuale run STUDY.toml``
runs them in dependency order, one folder each, with a ``report.html`` per analysis and
an ``index.html`` linking them, and reuses analyses already finished with the same inputs
and settings. The demo's study is ``gpuale/data/examples/semantic-children-study.toml``;
this one is smaller: the children data, its knowledge tasks, and the younger half by
age, at 200 permutations each.
"""

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import gpuale

work = Path(tempfile.mkdtemp())
study_file = work / "study.toml"
study_file.write_text("""
[study]
name = "children"
iterations = 200
cluster_p = 0.001
alpha = 0.05

[inputs]
children = "example:semantic-children"

[analyses.all]
type = "global"
input = "children"

[analyses.knowledge]
type = "global"
input = "children"
where = "task_type == knowledge"

[analyses.younger]
type = "global"
input = "children"
where = "age_mean >= 0"
split = { column = "age_mean", half = "low" }
""")

# %%
# Run it
# ------
# The same as ``gpuale run study.toml --out children-study --no-report`` on the command
# line (the report needs the ``report`` extra). Running it again reuses every analysis.
study = gpuale.load_study(study_file)
gpuale.run_study(study, work / "children-study", report=False)
for path in sorted((work / "children-study").iterdir()):
    print(path.name, "(a run folder)" if path.is_dir() else "")

# %%
# Read the results back
# ---------------------
# Each analysis folder is a run folder: :func:`gpuale.open_run` reads its record and
# tables. How many significant clusters did each analysis find?
names, counts = [], []
for name in ("all", "knowledge", "younger"):
    run = gpuale.open_run(work / "children-study" / name)
    names.append(f"{name}\n({run.record['n_experiments']} experiments)")
    counts.append(len(run.clusters()))
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(names, counts, color="tab:red")
ax.set_ylabel("significant clusters")
plt.show()
