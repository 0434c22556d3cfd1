"""
A conjunction of two analyses
=============================

Where do the knowledge tasks *and* the relatedness tasks converge? A conjunction is the
voxel-wise minimum of thresholded maps (Nichols et al. 2005): here two global ALEs, each
saved to a run folder, whose ``z_thresholded.nii.gz`` maps enter
``gpuale conjunction knowledge relatedness --out common``.
"""

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

import gpuale
from gpuale.examples import example_path

work = Path(tempfile.mkdtemp())
children = gpuale.load_dataset([example_path("semantic-children")])
folders = []
for task in ("knowledge", "relatedness"):
    group = gpuale.select(children, f"task_type == {task}")
    result = gpuale.run_ale(group, n_iters=200, seed=0)
    folders.append(gpuale.save_ale(result, work / task))
    print(task, len(group), "experiments,", len(result.clusters()), "clusters")

# %%
# The conjunction
# ---------------
# Run folders contribute their thresholded z maps; maps on different grids or of
# different statistics are errors, never resampled.
common = gpuale.conjunction(folders)
for c in common.clusters:
    print(f"cluster {c['cluster']} ({c['direction']}): {c['size_voxels']} voxels, "
          f"peak ({c['peak_x']:g}, {c['peak_y']:g}, {c['peak_z']:g})")
out = gpuale.save_conjunction(common, work / "common")
print(sorted(p.name for p in out.iterdir()))

# %%
# Each input's clusters and their overlap (maximum-intensity projections, axial).
maps = [nib.load(gpuale.open_run(f).thresholded_map_path()).get_fdata() for f in folders]
conj = common.values
fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
for ax, volume, title in zip(axes, [*maps, conj], ["knowledge", "relatedness", "both"]):
    ax.imshow(np.rot90(volume.max(axis=2)), cmap="hot")
    ax.set_title(title)
    ax.axis("off")
plt.show()
