"""
A contrast of two subsets
=========================

Where does ALE differ between the children's *knowledge* tasks and their *objects*
tasks? Both groups come from one input, each selected by its metadata, as
``gpuale contrast example:semantic-children example:semantic-children --where-a
"task_type == knowledge" --where-b "task_type == objects" --out k_vs_o`` does on the
command line. The null splits the pooled experiments at random into groups of the
original sizes.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import gpuale
from gpuale.examples import example_path

children = gpuale.load_dataset([example_path("semantic-children")])
knowledge = gpuale.select(children, "task_type == knowledge")
objects = gpuale.select(children, "task_type == objects")
print(len(knowledge), "knowledge experiments,", len(objects), "objects experiments")

# %%
# The whole-brain contrast
# ------------------------
# Every voxel tested two-sided. With n random splits the smallest p is 1/n, so the usual
# p < 0.001 needs more than 1,000 splits (the default is 5,000); this page uses 300
# splits and p < 0.01 to stay quick.
result = gpuale.run_contrast(knowledge, objects, n_iters=300, p_threshold=0.01, seed=0)
for c in result.clusters():
    print(f"cluster {c['cluster']} ({c['direction']}): {c['size_voxels']} voxels, "
          f"peak ({c['peak_x']:g}, {c['peak_y']:g}, {c['peak_z']:g})")

# %%
# The signed z map
# ----------------
# Positive where knowledge > objects, negative where objects > knowledge, kept where
# p < 0.01 in clusters of at least 200 mm³; in a saved folder (``gpuale.save_contrast``)
# it is ``z_thresholded.nii.gz``. Below, the most extreme z along each axis.
z = result.grid.to_volume(result.maps()["z_thresholded"])
extreme = [np.take_along_axis(z, np.expand_dims(np.abs(z).argmax(axis=a), a), a).squeeze(a)
           for a in range(3)]
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, plane, name in zip(axes, extreme, ["sagittal", "coronal", "axial"]):
    ax.imshow(np.rot90(plane), cmap="coolwarm", vmin=-3, vmax=3)
    ax.set_title(name)
    ax.axis("off")
plt.show()
