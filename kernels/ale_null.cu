// Monte Carlo null of ALE (Eickhoff et al. 2012) for a batch of permutations, on the GPU
// with no host round trip inside the batch. The numpy definition these kernels reproduce
// is gpuale/backends/numpy_.py (NumpyBackend.null_batch, _PermutationEngine); the launch
// sequence is gpuale/backends/cupy_.py (_NullPipeline):
//
//   gpuale_draw_foci             relocate every focus of every permutation (Philox)
//   gpuale_log_sum_scatter       -sum_e log1p(-MA_e(v)) per permutation, fixed point
//   gpuale_threshold_init        max ALE per permutation; supra-threshold voxels become
//                                one-voxel clusters carrying their excess ALE
//   gpuale_label_merge           union-find over 6/18/26 neighbours
//   gpuale_label_compress        every label points straight at its root
//   gpuale_cluster_accumulate    sizes and masses added into the roots
//   gpuale_cluster_maxima        largest size and mass per permutation
//   gpuale_finish                the three numbers per permutation, as the host wants them
//
// Plain CUDA C++: grid-stride loops (any launch shape is correct), atomics, no shared
// memory or __syncthreads, and nothing beyond what NVRTC provides, so kernels/host_shim.h
// can compile this file with g++ and run each kernel sequentially against the numpy twin.
//
// Layout. Volumes are C-ordered (flat = (i * ny + j) * nz + k). Per-permutation arrays are
// indexed by the compact in-mask index m (the position of a voxel in grid.in_mask_flat,
// which is sorted), permutation b at offset b * n_mask: 228,483 entries per permutation on
// the MNI 2 mm grid instead of 902,629. Because in_mask_flat is sorted, a neighbour with
// a smaller flat index also has a smaller compact index.
//
// Determinism. Every floating-point sum is carried in fixed point in 64-bit integers, so
// the order of atomic additions cannot change a result: the GPU, the host shim and any
// launch shape give the same bits.
//
//   log-sum   -S(v) = -sum_e log1p(-MA_e(v)) >= 0, in units of 2^-50
//             (GPUALE_LOG_SUM_FRAC_BITS). An ALE kernel peaks near 0.01, so a term is
//             ~0.01 and |S| stays below ~64 (2^56 units) even for thousands of
//             experiments; a term is clamped at 64 on the host (ALE is then 1 exactly in
//             float32 and float64). Each term is rounded once, by at most 2^-51, so the
//             sum differs from a float64 sum by < n_experiments * 4.5e-16.
//   mass      sum over a cluster of (ALE - threshold) in units of 2^-40
//             (GPUALE_MASS_FRAC_BITS). Each excess is < 1, so up to 2^23 voxels (the 1 mm
//             MNI mask has 1.9 million) fit in 63 bits; rounding is < 2^-41 per voxel.
//
// Since ALE = 1 - exp(S) is monotone in -S, the maximum ALE is taken as an integer
// atomicMax of -S (the atomicMin of S, without signed arithmetic) and converted once.
#include "philox.cuh"

#define GPUALE_LOG_SUM_FRAC_BITS 50
#define GPUALE_MASS_FRAC_BITS 40
// 2^-50 and 2^-40, exact in double.
#define GPUALE_LOG_SUM_UNIT (1.0 / 1125899906842624.0)
#define GPUALE_MASS_UNIT (1.0 / 1099511627776.0)
#define GPUALE_MASS_SCALE 1099511627776.0

// focus_pos rows: (i, j, k, flat voxel index) of a focus in one permutation.
#define GPUALE_POS_WORDS 4
// focus_info rows: (first focus of its experiment, one past its last focus, start of its
// kernel in the log table, kernel side).
#define GPUALE_INFO_WORDS 4

// ALE of a voxel from its fixed-point -S: 1 - exp(S) in double, then float32, as
// numpy_.ale_from_log_sum rounds it.
__device__ __forceinline__ float gpuale_ale_from_neg_log_sum(unsigned long long neg_log_sum) {
    return (float)(1.0 - exp(-(double)neg_log_sum * GPUALE_LOG_SUM_UNIT));
}

// (a) Draws. focus_pos[(b * n_foci + j) * 4 + (0, 1, 2, 3)] = (i, j, k, flat) of the voxel
// in_mask_flat[uniform_below(philox((j, first + b, 0, 0), seed), n_mask)].
extern "C" __global__ void gpuale_draw_foci(unsigned int seed_lo, unsigned int seed_hi,
                                            unsigned int first_permutation, int n_perm,
                                            int n_foci, int n_mask, const int* in_mask_flat,
                                            int ny, int nz, int* focus_pos) {
    const int n_draws = n_perm * n_foci;  // the host keeps this below 2^31
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n_draws;
         t += blockDim.x * gridDim.x) {
        const int b = t / n_foci;
        const int focus = t - b * n_foci;
        const unsigned int choice =
            gpuale_relocation_draw(seed_lo, seed_hi, first_permutation + (unsigned int)b,
                                   (unsigned int)focus, (unsigned int)n_mask);
        const int flat = in_mask_flat[choice];
        const int i = flat / (ny * nz);
        const int rest = flat - i * (ny * nz);
        const int j = rest / nz;
        int* out = focus_pos + (long long)t * GPUALE_POS_WORDS;
        out[0] = i;
        out[1] = j;
        out[2] = rest - j * nz;
        out[3] = flat;
    }
}

// (b) Batched log-sum, by scatter: each (permutation, focus) stamps its kernel box.
//
// Why scatter and not gather-per-voxel: the foci move every permutation, so a voxel that
// gathers would first need a per-permutation spatial index of the foci (a sort or binning
// pass), and would then still visit every in-mask voxel (228k on MNI 2 mm) although the
// boxes cover a fraction of them for small meta-analyses, with an irregular number of
// foci to test per voxel. Scatter does only the work that exists, with regular loops: its
// floor is
//     n_foci x kernel-box voxels x permutations
// atomic adds (e.g. 3,000 foci x 9,261 (21^3) x 10,000 = 2.8e11), spread over distinct
// addresses and coalesced along k; integer atomics keep the result independent of their
// order.
//
// Non-additive MA (Turkeltaub et al. 2012): the voxel's term for experiment e must be added
// once, with the largest kernel value of e's foci there. The focus that holds the largest
// value (ties: the lowest focus index) adds it; the others of e skip the voxel. The table
// holds -log1p(-K) in fixed point, which is monotone in K, so comparing table entries is
// comparing kernel values. Work per stamped voxel grows with the foci of one experiment
// (a short loop over positions that are the same for the whole block, so broadcast loads).
//
// Launch: y strides over (permutation, focus) pairs, x over the voxels of a box, so each
// block reads one focus's data and consecutive threads touch consecutive voxels.
extern "C" __global__ void gpuale_log_sum_scatter(int n_perm, int n_foci, const int* focus_pos,
                                                  const int* focus_info,
                                                  const unsigned long long* neg_log_table,
                                                  int nx, int ny, int nz,
                                                  const int* vox_to_mask, int n_mask,
                                                  unsigned long long* neg_log_sum) {
    const int n_pairs = n_perm * n_foci;  // the host keeps this below 2^31
    for (int pair = blockIdx.y; pair < n_pairs; pair += gridDim.y) {
        const int b = pair / n_foci;
        const int focus = pair - b * n_foci;
        const int* pos = focus_pos + (long long)pair * GPUALE_POS_WORDS;
        const int* others = focus_pos + (long long)b * n_foci * GPUALE_POS_WORDS;
        const int* info = focus_info + focus * GPUALE_INFO_WORDS;
        const int first = info[0];
        const int stop = info[1];
        const unsigned long long* table = neg_log_table + info[2];
        const int side = info[3];
        const int radius = side / 2;
        const int box = side * side * side;
        unsigned long long* total = neg_log_sum + (unsigned long long)b * n_mask;
        for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < box;
             r += blockDim.x * gridDim.x) {
            const int a = r / (side * side);
            const int rest = r - a * (side * side);
            const int c = rest / side;
            const int e = rest - c * side;
            const int vi = pos[0] + a - radius;
            const int vj = pos[1] + c - radius;
            const int vk = pos[2] + e - radius;
            if (vi < 0 || vi >= nx || vj < 0 || vj >= ny || vk < 0 || vk >= nz) continue;
            const int m = vox_to_mask[(vi * ny + vj) * nz + vk];
            if (m < 0) continue;  // out-of-mask voxels are never read
            const unsigned long long value = table[r];
            bool wins = true;
            for (int g = first; g < stop && wins; ++g) {
                if (g == focus) continue;
                const int* q = others + g * GPUALE_POS_WORDS;
                const int ga = vi - q[0] + radius;
                const int gc = vj - q[1] + radius;
                const int ge = vk - q[2] + radius;
                if ((unsigned int)ga >= (unsigned int)side ||
                    (unsigned int)gc >= (unsigned int)side ||
                    (unsigned int)ge >= (unsigned int)side)
                    continue;
                const unsigned long long other = table[(ga * side + gc) * side + ge];
                wins = value > other || (value == other && focus < g);
            }
            if (wins) atomicAdd(&total[m], value);
        }
    }
}

// (c) + (d, init). Per permutation, max -S over the mask (= max ALE); then every voxel with
// float32 ALE > threshold, compared in double as NiMARE compares its float32 ALE with the
// float64 bin centre, becomes its own cluster: label = its compact index, size 1, and the log-sum slot
// is reused for its excess float64(ALE) - threshold in mass units. Other voxels get -1.
extern "C" __global__ void gpuale_threshold_init(int n_perm, int n_mask, double threshold,
                                                 unsigned long long* neg_log_sum,
                                                 unsigned long long* max_neg_log_sum,
                                                 int* label, unsigned int* size) {
    for (int b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const unsigned long long base = (unsigned long long)b * n_mask;
        for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += blockDim.x * gridDim.x) {
            const unsigned long long d = neg_log_sum[base + m];
            // A plain read first: most voxels are below the running maximum, and skipping
            // their atomics avoids serialising n_mask atomics on one address.
            if (d > max_neg_log_sum[b]) atomicMax(&max_neg_log_sum[b], d);
            const float ale = gpuale_ale_from_neg_log_sum(d);
            if ((double)ale > threshold) {
                label[base + m] = m;
                size[base + m] = 1u;
                neg_log_sum[base + m] =
                    (unsigned long long)rint(((double)ale - threshold) * GPUALE_MASS_SCALE);
            } else {
                label[base + m] = -1;
                size[base + m] = 0u;
                neg_log_sum[base + m] = 0ull;
            }
        }
    }
}

// Root of x's tree. Labels only ever point to smaller indices, so even a stale read is a
// valid (older) ancestor and the walk ends.
__device__ __forceinline__ int gpuale_find_root(const int* label, int x) {
    int parent;
    while ((parent = label[x]) != x) x = parent;
    return x;
}

// Lock-free union (Playne & Hawick 2018, "A new algorithm for parallel connected-component
// labelling on GPUs", IEEE TPDS 29:1217): hook the larger root under the smaller with
// atomicMin; if it was no longer a root, go on with what it pointed to. Each retry strictly
// lowers a or b, so it ends, and every component's root is its smallest compact index,
// whatever order the unions happen in.
__device__ __forceinline__ void gpuale_union(int* label, int a, int b) {
    bool done = false;
    while (!done) {
        a = gpuale_find_root(label, a);
        b = gpuale_find_root(label, b);
        if (a < b) {
            const int old = atomicMin(&label[b], a);
            done = old == b;
            b = old;
        } else if (b < a) {
            const int old = atomicMin(&label[a], b);
            done = old == a;
            a = old;
        } else {
            done = true;
        }
    }
}

// (d, merge). Each supra-threshold voxel unions with its supra-threshold neighbours that
// come before it in the lattice (the 3, 9 or 13 of the 27-cube codes below the centre):
// every neighbour pair is visited once. connectivity: 6 (faces), 18 (+ edges), 26 (+ corners).
extern "C" __global__ void gpuale_label_merge(int n_perm, int n_mask, const int* in_mask_flat,
                                              const int* vox_to_mask, int nx, int ny, int nz,
                                              int connectivity, int* label) {
    const int reach = connectivity == 6 ? 1 : (connectivity == 18 ? 2 : 3);
    for (int b = blockIdx.y; b < n_perm; b += gridDim.y) {
        int* perm_label = label + (unsigned long long)b * n_mask;
        for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += blockDim.x * gridDim.x) {
            if (perm_label[m] < 0) continue;
            const int flat = in_mask_flat[m];
            const int i = flat / (ny * nz);
            const int rest = flat - i * (ny * nz);
            const int j = rest / nz;
            const int k = rest - j * nz;
            for (int code = 0; code < 13; ++code) {
                const int di = code / 9 - 1;
                const int dj = (code / 3) % 3 - 1;
                const int dk = code % 3 - 1;
                if ((di != 0) + (dj != 0) + (dk != 0) > reach) continue;
                const int ni = i + di;
                const int nj = j + dj;
                const int nk = k + dk;
                if (ni < 0 || ni >= nx || nj < 0 || nj >= ny || nk < 0 || nk >= nz) continue;
                const int n = vox_to_mask[(ni * ny + nj) * nz + nk];
                if (n < 0 || perm_label[n] < 0) continue;
                gpuale_union(perm_label, m, n);
            }
        }
    }
}

// (d, path compression). Afterwards every supra-threshold label is its root.
extern "C" __global__ void gpuale_label_compress(int n_perm, int n_mask, int* label) {
    for (int b = blockIdx.y; b < n_perm; b += gridDim.y) {
        int* perm_label = label + (unsigned long long)b * n_mask;
        for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += blockDim.x * gridDim.x) {
            if (perm_label[m] >= 0) perm_label[m] = gpuale_find_root(perm_label, m);
        }
    }
}

// (d, sizes and masses). A root already holds its own voxel (size 1, its excess); every
// other voxel of the cluster adds into the root. Roots are only written and non-roots only
// read, so reading a voxel's own excess never races with an addition.
extern "C" __global__ void gpuale_cluster_accumulate(int n_perm, int n_mask, const int* label,
                                                     unsigned int* size,
                                                     unsigned long long* mass) {
    for (int b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const unsigned long long base = (unsigned long long)b * n_mask;
        for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += blockDim.x * gridDim.x) {
            const int root = label[base + m];
            if (root < 0 || root == m) continue;
            atomicAdd(&size[base + root], 1u);
            atomicAdd(&mass[base + root], mass[base + m]);
        }
    }
}

// (d, maxima). Largest cluster size and mass of each permutation (0 when none).
extern "C" __global__ void gpuale_cluster_maxima(int n_perm, int n_mask, const int* label,
                                                 const unsigned int* size,
                                                 const unsigned long long* mass,
                                                 unsigned int* max_size,
                                                 unsigned long long* max_mass) {
    for (int b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const unsigned long long base = (unsigned long long)b * n_mask;
        for (int m = blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += blockDim.x * gridDim.x) {
            if (label[base + m] != m) continue;  // roots only
            if (size[base + m] > max_size[b]) atomicMax(&max_size[b], size[base + m]);
            if (mass[base + m] > max_mass[b]) atomicMax(&max_mass[b], mass[base + m]);
        }
    }
}

// The three numbers per permutation in the types null_batch returns. Writes every element.
extern "C" __global__ void gpuale_finish(int n_perm, const unsigned long long* max_neg_log_sum,
                                         const unsigned int* max_size,
                                         const unsigned long long* max_mass, double* max_ale_out,
                                         long long* max_size_out, double* max_mass_out) {
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < n_perm;
         b += blockDim.x * gridDim.x) {
        max_ale_out[b] = (double)gpuale_ale_from_neg_log_sum(max_neg_log_sum[b]);
        max_size_out[b] = (long long)max_size[b];
        max_mass_out[b] = (double)max_mass[b] * GPUALE_MASS_UNIT;
    }
}
