"""
Global ALE from your own spreadsheet
====================================

A coordinate table as a paper or a lab keeps it: one row per focus, the experiment named
by two columns (publication and contrast), the sample size in a column called
``subjects``. Here the table is written from the bundled children data set (Enge et al.
2021), then read back as any spreadsheet would be, with
``--experiment-column publication,contrast --sample-size-column subjects`` on the command
line or the same keywords in Python.
"""

# %%
# Write a spreadsheet
# -------------------
# Any CSV or TSV with one row per focus loads; other columns become experiment metadata
# (for ``where`` selections) or, where they vary within an experiment, focus attributes.
import csv
import re
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import gpuale
from gpuale.examples import example_path

children = gpuale.load_dataset([example_path("semantic-children")])
work = Path(tempfile.mkdtemp())
table = work / "my_foci.csv"
with table.open("w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["publication", "contrast", "subjects", "task", "x", "y", "z"])
    for exp in children:
        # "arnoldussen2006nc" -> publication "arnoldussen2006", contrast "nc"
        publication, contrast = re.fullmatch(r"(\D+\d{4})(.*)", exp.id).groups()
        for x, y, z in exp.foci:
            rows.writerow([publication, contrast, exp.n_subjects,
                           exp.metadata.get("task_type"), x, y, z])
print(table.read_text().splitlines()[:3])

# %%
# Load it and run the ALE
# -----------------------
# The space is given because the table has no space column (foci are MNI here). A real
# analysis uses the default 5,000 permutations or ``n_iters="auto"``; 200 keep this page
# quick.
dataset = gpuale.load_dataset(table, space="MNI", experiment_column=["publication", "contrast"],
                              sample_size_column="subjects")
print(f"{len(dataset)} experiments, {sum(e.n_foci for e in dataset)} foci")
result = gpuale.run_ale(dataset, n_iters=200, seed=0)
for cluster in result.clusters():
    print(cluster["cluster"], cluster["size_voxels"], "voxels, peak",
          (cluster["peak_x"], cluster["peak_y"], cluster["peak_z"]),
          "FWE p", cluster["p_fwe_size"])

# %%
# The thresholded z map
# ---------------------
# Maximum-intensity projections of the clusters with cluster-size FWE p < 0.05. The
# same map is ``z_thresholded.nii.gz`` in a saved run folder (``gpuale.save_ale``).
z = result.images()["z_thresholded"].get_fdata()
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for axis, (ax, name) in enumerate(zip(axes, ["sagittal", "coronal", "axial"])):
    ax.imshow(np.rot90(z.max(axis=axis)), cmap="hot")
    ax.set_title(name)
    ax.axis("off")
plt.show()
