"""
Permutations on a Dask cluster
==============================

``--scheduler ADDRESS`` on the command line, or ``scheduler=DaskScheduler(client)`` in
Python, sends the permutation chunks to a ``dask.distributed`` cluster (the ``dask``
extra on this machine and every worker). A permutation depends only on the seed and its
number, so the null is identical to a single-machine run with the same seed. Here a
``LocalCluster`` of two workers on this machine stands in for a real cluster
(``dask scheduler`` / ``dask worker``, dask-jobqueue on SLURM, dask-cuda's
``LocalCUDACluster``: see the Dask page of the user guide).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

import gpuale
from gpuale.examples import example_path
from gpuale.nulls import DaskScheduler

children = gpuale.load_dataset([example_path("semantic-children")])

with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    on_dask = gpuale.run_ale(children, n_iters=200, seed=0,
                             scheduler=DaskScheduler(client))
here = gpuale.run_ale(children, n_iters=200, seed=0)

# %%
# The same null, permutation by permutation
# -----------------------------------------
# Each permutation's largest cluster, on the cluster and on this machine alone.
sizes_dask = on_dask.montecarlo.max_cluster_size
sizes_here = here.montecarlo.max_cluster_size
print("identical cluster-size nulls:", np.array_equal(sizes_dask, sizes_here))
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(sizes_here, "o", label="this machine", alpha=0.6)
ax.plot(sizes_dask, ".", label="Dask LocalCluster", color="k")
ax.set_xlabel("permutation")
ax.set_ylabel("largest cluster (voxels)")
ax.legend()
plt.show()
