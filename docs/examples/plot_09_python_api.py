"""
The Python API from a script
============================

The README's example, saved as a script and run with ``python script.py``: no
``if __name__ == "__main__":`` guard is needed, as the CPU engine runs on threads. Then
the run folder's report, as the command line writes it (the ``report`` extra), and the
cluster table read back.
"""

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import gpuale
from gpuale.examples import example_path

folder = Path(tempfile.mkdtemp()) / "gpuale-example"  # this page's scratch folder

# Sleuth text, CSV/TSV tables, experiment sheets or NiMARE JSON; here the bundled data.
dataset = gpuale.load_dataset([example_path("semantic-children")])
result = gpuale.run_ale(dataset, n_iters=200, seed=0)  # device="auto" uses a GPU if any
ale, p, z = result.ale, result.p, result.z               # in-mask vectors
images = result.images()                                # dict of nibabel images
clusters = result.clusters()                            # list of dicts, as clusters.tsv
print(f"{len(clusters)} significant clusters")
gpuale.save_ale(result, folder)                         # refuses to overwrite a folder

# %%
# The report
# ----------
# ``write_report`` writes ``report.html`` from the folder's files only; without the
# ``report`` extra it says how to get it.
from gpuale.report import ReportUnavailable, write_report  # noqa: E402

try:
    print(write_report(folder))
except ReportUnavailable as exc:
    print(exc)

# %%
# The folder read back
# --------------------
# :func:`gpuale.open_run` reads any finished run folder: its run.json record, its
# tables, its null distributions.
run = gpuale.open_run(folder)
print(run.kind, run.record["n_experiments"], "experiments,", run.n_clusters, "clusters")
nulls = run.nulls()
print(sorted(nulls))
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(nulls["max_cluster_size"], bins=30, color="grey")
for c in run.clusters():
    ax.axvline(c["size_voxels"], color="tab:red")
ax.set_xlabel("largest cluster per permutation (voxels); red: observed clusters")
plt.show()
