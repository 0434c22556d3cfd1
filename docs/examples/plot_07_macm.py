"""
MACM on a small database
========================

Meta-analytic connectivity modelling (Robinson et al. 2010) selects every experiment of
a database with at least one focus inside a seed region and runs a global ALE with
cluster-level FWE over them: which regions co-activate with the seed? The selection is
NiMARE's ``Dataset.get_studies_by_mask``. Here the "database" is the bundled adults data
set (Jackson 2021, 272 experiments) and the seed a 10 mm sphere in the left inferior
frontal gyrus; on the command line, ``gpuale macm example:semantic-adults --sphere
-48,24,10,10 --out ifg``. A real database is a Neurosynth or NeuroQuery release or a
NeuroStore Studyset.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import gpuale
from gpuale.examples import example_path

database = gpuale.load_dataset([example_path("semantic-adults")])
grid = gpuale.load_grid()
seed = gpuale.roi_from_sphere((-48, 24, 10), 10, grid)
result = gpuale.run_macm(database, seed, grid=grid, n_iters=100, seed=0)
print(f"{len(result.selected)} of {len(result.database)} experiments have a focus in the seed")
for c in result.ale.clusters():
    print(f"cluster {c['cluster']}: {c['size_voxels']} voxels, "
          f"peak ({c['peak_x']:g}, {c['peak_y']:g}, {c['peak_z']:g})")

# %%
# The co-activation map and the seed
# ----------------------------------
# The thresholded z map (cluster-size FWE p < 0.05) in red, the seed in blue; axial
# maximum-intensity projection.
z = grid.to_volume(result.ale.maps()["z_thresholded"])
fig, ax = plt.subplots(figsize=(4, 4.5))
ax.imshow(np.rot90(z.max(axis=2)), cmap="hot")
ax.contour(np.rot90(seed.volume.max(axis=2)), levels=[0.5], colors="tab:blue")
ax.axis("off")
plt.show()
