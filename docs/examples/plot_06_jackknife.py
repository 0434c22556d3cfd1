"""
Jackknife: which experiments carry a cluster?
=============================================

``gpuale jackknife RUN_DIR`` re-runs a finished global ALE without each experiment in
turn (its inputs read again and checked against run.json, its settings, seed and
iterations) and writes ``jackknife.tsv`` and ``jackknife.json`` into the folder; the run's
own files are left as they are. Here: the 21 knowledge-task experiments of the children
data, at 100 permutations.
"""

# %%
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import gpuale
from gpuale.rerun import run_jackknife

# The jackknife re-runs a folder that records its inputs: one written by ``gpuale
# global`` (or a study). ``sys.executable -m gpuale`` is the ``gpuale`` command.
work = Path(tempfile.mkdtemp())
run_dir = work / "knowledge"
subprocess.run([sys.executable, "-m", "gpuale", "global", "example:semantic-children",
                "--where", "task_type == knowledge", "--iters", "100", "--no-report",
                "--quiet", "--out", str(run_dir)], check=True)
print(gpuale.open_run(run_dir).n_clusters, "clusters")

# %%
# The jackknife
# -------------
# The same as ``gpuale jackknife knowledge`` on the command line.
run_jackknife(run_dir)
rows = gpuale.open_run(run_dir).jackknife()
print(sorted(rows[0]))

# %%
# Per cluster (rows) and experiment (columns): does a significant cluster still overlap
# the cluster without that experiment? A column of gaps is an experiment a cluster
# depends on.
clusters = sorted({int(r["cluster"]) for r in rows})
experiments = sorted({r["experiment"] for r in rows})
survives = np.full((len(clusters), len(experiments)), np.nan)
for r in rows:
    survives[clusters.index(int(r["cluster"])), experiments.index(r["experiment"])] = (
        str(r["survives_without"]).lower() in ("true", "yes", "1"))
fig, ax = plt.subplots(figsize=(9, 2.8))
ax.imshow(survives, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
ax.set_yticks(range(len(clusters)), [f"cluster {c}" for c in clusters])
ax.set_xticks(range(len(experiments)), experiments, rotation=90, fontsize=7)
ax.set_title("survives without the experiment (green) or is lost (red)")
plt.tight_layout()
plt.show()
