"""The names of the maps a result holds (NiMARE's names where it has them).

Results name their maps with these (``ALEResult.maps()``, a balanced contrast's); the
run folder (:mod:`gpuale.runfolder`) turns a name into its file with ``map_file`` and
readers ask for maps by name.
"""

from __future__ import annotations

__all__ = [
    "BALANCED_CONJUNCTION",
    "BALANCED_LOGP",
    "BALANCED_P",
    "BALANCED_PROB",
    "BALANCED_STAT",
    "BALANCED_Z",
    "CLUSTER_LABELS",
    "CONJUNCTION_MAP",
    "TFCE_LOGP_FWE",
    "TFCE_MAP",
    "TFCE_THRESHOLDED",
    "TFCE_Z_FWE",
    "Z",
    "Z_THRESHOLDED",
]


#: Map names (``map_file`` gives their files) that readers ask for by name.
Z = "z"


Z_THRESHOLDED = "z_thresholded"


CLUSTER_LABELS = "cluster_labels"


#: TFCE of a global ALE (``--tfce``): the TFCE map, its voxel-level FWE as -log10 p and z
#: (NiMARE's naming), and the map where that p < alpha.
TFCE_MAP = "tfce"


TFCE_LOGP_FWE = "logp_desc-tfce_level-voxel"


TFCE_Z_FWE = "z_desc-tfce_level-voxel"


TFCE_THRESHOLDED = "tfce_thresholded"


CONJUNCTION_MAP = "conjunction"


#: A balanced contrast (``--mode balanced``), as NiMARE's BalancedALESubtraction names its
#: maps: the mean balanced difference, its p, z and -log10 p, each group's probabilistic
#: map and their minimum.
BALANCED_STAT = "stat_desc-balancedGroup1MinusGroup2"


BALANCED_P = "p_desc-balancedGroup1MinusGroup2"


BALANCED_Z = "z_desc-balancedGroup1MinusGroup2"


BALANCED_LOGP = "logp_desc-balancedGroup1MinusGroup2"


BALANCED_PROB = ("prob_desc-group1", "prob_desc-group2")


BALANCED_CONJUNCTION = "stat_desc-conjunction"
