// Monte Carlo null of ALE (Eickhoff et al. 2012) for a batch of permutations, on the GPU
// with no host round trip inside the batch. The numpy definition these kernels reproduce
// is gpuale/engines/numpy_.py (NumpyEngine, _PermutationScratch); the launch sequence is
// gpuale/engines/cuda.py (_NullPipeline):
//
//   gpuale_draw_foci             relocate every focus of every permutation (Philox)
//   gpuale_overlap_lists         per (permutation, focus): the foci of its experiment whose
//                                kernel boxes overlap its own
//   gpuale_log_sum_scatter       -sum_e log1p(-MA_e(v)) per permutation, fixed point
//   gpuale_threshold_compact     max ALE per permutation, and the compact list of its
//                                supra-threshold voxels (one-voxel clusters to start with)
//   gpuale_label_merge           union-find over 6/18/26 neighbours, over the lists
//   gpuale_label_compress        every listed label points straight at its root
//   gpuale_cluster_accumulate    sizes and masses added into the roots
//   gpuale_cluster_maxima        largest size and mass per permutation
//   gpuale_finish                the three numbers per permutation, as the host wants them
//
// SCALE (gpuale.nullspecs.ScaleNullSpec; the numpy definition is NumpyEngine._scale_chunk)
// runs the same overlap lists and scatter between its own two kernels:
//
//   gpuale_scale_draw_foci       every focus takes a database focus's voxel (Philox)
//   gpuale_scale_exceed          per in-mask voxel, the permutations whose -S reaches the
//                                observed -S, and max -S per permutation
//
// Co-activation-based parcellation (gpuale.engines._subsets; the numpy definition is
// pool_log_maps with NumpyEngine.experiment_log_maps) reads its pool's MA on the device:
//
//   gpuale_pool_ranks            per (pool experiment, in-mask voxel of a chunk), the rank
//                                of its MA among its kernel's distinct values
//
// Plain CUDA C++: grid-stride loops with 64-bit counters (any launch shape is correct, and
// no index wraps however large a batch is), atomics, relaxed atomic loads and stores
// (relaxed.cuh) where a thread reads a word others update atomically, no shared memory,
// no __syncthreads, no warp intrinsics, and nothing beyond what NVRTC provides. So
// kernels/host_shim.h can compile this file with g++ and run it on the host, thread after
// thread (tests/test_kernels_host.py, the engine contract) or as randomly interleaved
// fibers that may read older values (tests/test_kernels_concurrent.py).
//
// Layout. Volumes are C-ordered (flat = (i * ny + j) * nz + k). Per-permutation arrays are
// indexed by the compact in-mask index m (the position of a voxel in grid.in_mask_flat,
// which is sorted), permutation b at offset b * n_mask: 228,483 entries per permutation on
// the MNI 2 mm grid instead of 902,629. Because in_mask_flat is sorted, a neighbour with
// a smaller flat index also has a smaller compact index.
//
// Determinism. Every floating-point sum is carried in fixed point in 64-bit integers, so
// the order of atomic additions cannot change a result: the GPU, the host shim in either
// mode and any launch shape give the same bits.
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
// atomicMax of -S (the atomicMin of S, without signed arithmetic) and converted once, and
// "float32 ALE > threshold" is "-S >= cut" for one integer cut the host computes
// (gpuale.engines.cuda.supra_threshold_cut): every pass then agrees on which voxels are
// supra-threshold without an exp per voxel.
#include "philox.cuh"
#include "relaxed.cuh"

#define GPUALE_LOG_SUM_FRAC_BITS 50
#define GPUALE_MASS_FRAC_BITS 40
// 2^-50 and 2^-40, exact in double.
#define GPUALE_LOG_SUM_UNIT (1.0 / 1125899906842624.0)
#define GPUALE_MASS_UNIT (1.0 / 1099511627776.0)
#define GPUALE_MASS_SCALE 1099511627776.0

// focus_pos rows: (i, j, k, flat voxel index) of a focus in one permutation.
#define GPUALE_POS_WORDS 4
// focus_info rows: (first focus of its experiment, one past its last focus, start of its
// kernel in the log table, kernel side, start of its overlap-list slots in a permutation,
// number of its first box-face column among a permutation's). All foci of an experiment
// share its kernel, so its boxes have one side.
#define GPUALE_INFO_WORDS 6

// Overlap-list entries, one 32-bit word per overlapping focus g of focus f: g's position
// minus f's on each axis, biased by 128 (the host keeps kernel sides <= 128, so a
// difference that can overlap is within +-127), and whether g comes first (a tie of
// kernel values goes to the lower focus index).
#define GPUALE_OVERLAP_BIAS 128
#define GPUALE_OVERLAP_FIRST (1u << 24)
// Entries whose column test is made once per column (a bit mask); further entries, which
// need an experiment with more than 64 foci within one kernel box of a focus, are tested
// at every voxel instead.
#define GPUALE_OVERLAP_MASKED 64

// Work counters for bench/work_counts.py. The host shim's counting build defines
// GPUALE_TALLY; on the device and in every other build they compile to nothing.
enum gpuale_tally_counter {
    GPUALE_TALLY_PAIRS,            // (permutation, focus) pairs listed
    GPUALE_TALLY_PAIR_TESTS,       // focus pairs compared while listing overlaps
    GPUALE_TALLY_OVERLAPS,         // overlap-list entries written
    GPUALE_TALLY_PAIR_LOADS,       // pair boxes loaded by a lane (once per pair and lane)
    GPUALE_TALLY_COLUMNS,          // in-volume box columns walked (one lane each)
    GPUALE_TALLY_TEAM_ROUNDS,      // rounds of a team over its chunk (x lanes: lane slots)
    GPUALE_TALLY_COLUMN_TESTS,     // overlap entries tested once per column
    GPUALE_TALLY_BOX_VOXELS,       // in-volume box voxels visited
    GPUALE_TALLY_STAMPS,           // in-mask box voxels (a kernel value looked up)
    GPUALE_TALLY_VOXEL_TESTS,      // overlap entries tested at a stamped voxel
    GPUALE_TALLY_CONTESTS,         // ... whose box holds it (a kernel value compared)
    GPUALE_TALLY_STAMP_ADDS,       // atomic additions into the log-sum
    GPUALE_TALLY_MASK_VOXELS,      // in-mask voxels read by the threshold pass
    GPUALE_TALLY_SUPRA,            // supra-threshold voxels listed
    GPUALE_TALLY_NEIGHBOURS,       // in-mask neighbours looked at by the merge
    GPUALE_TALLY_UNIONS,           // unions of supra-threshold neighbours
    GPUALE_TALLY_ROOT_STEPS,       // label reads while finding roots
    GPUALE_TALLY_WALK_ROUNDS,      // rounds of a column walk (its loads issued together)
    GPUALE_TALLY_COUNT
};
#ifndef GPUALE_TALLY
#define GPUALE_TALLY(counter, n) ((void)0)
#endif

// ALE of a voxel from its fixed-point -S: 1 - exp(S) in double, then float32, as
// numpy_.ale_from_log_sum rounds it.
__device__ __forceinline__ float gpuale_ale_from_neg_log_sum(unsigned long long neg_log_sum) {
    return (float)(1.0 - exp(-(double)neg_log_sum * GPUALE_LOG_SUM_UNIT));
}

// A supra-threshold voxel's float64(ALE) - threshold in mass units. Clamped at 0: the cut
// is computed with the host's exp, and a device exp one ulp lower must not wrap around.
__device__ __forceinline__ unsigned long long gpuale_mass_excess(unsigned long long neg_log_sum,
                                                                 double threshold) {
    const double excess = (double)gpuale_ale_from_neg_log_sum(neg_log_sum) - threshold;
    return excess > 0.0 ? (unsigned long long)rint(excess * GPUALE_MASS_SCALE) : 0ull;
}

// (a) Draws. focus_pos[(b * n_foci + j) * 4 + (0, 1, 2, 3)] = (i, j, k, flat) of the voxel
// in_mask_flat[uniform_below(philox((j, first + b, 0, 0), seed), n_mask)].
extern "C" __global__ void gpuale_draw_foci(unsigned int seed_lo, unsigned int seed_hi,
                                            unsigned int first_permutation, int n_perm,
                                            int n_foci, int n_mask, const int* in_mask_flat,
                                            int ny, int nz, int* focus_pos) {
    const long long n_draws = (long long)n_perm * n_foci;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_draws;
         t += stride) {
        const long long b = t / n_foci;
        const int focus = (int)(t - b * n_foci);
        const unsigned int choice =
            gpuale_relocation_draw(seed_lo, seed_hi, first_permutation + (unsigned int)b,
                                   (unsigned int)focus, (unsigned int)n_mask);
        const int flat = in_mask_flat[choice];
        const int i = flat / (ny * nz);
        const int rest = flat - i * (ny * nz);
        const int j = rest / nz;
        int* out = focus_pos + t * GPUALE_POS_WORDS;
        out[0] = i;
        out[1] = j;
        out[2] = rest - j * nz;
        out[3] = flat;
    }
}

// (b) Overlap lists. Non-additive MA (Turkeltaub et al. 2012): a voxel's term for
// experiment e is added once, with the largest kernel value of e's foci there; the focus
// holding it (ties: the lowest focus index) adds it and the others skip the voxel. Only
// foci whose boxes overlap can contest a voxel: on the adults data about 2.7 of an
// experiment's ~26 other foci per focus (box-weighted), and none for a fifth of the foci.
// So, once per (permutation, focus), this lists them, and the scatter tests only those.
//
// Focus f of an experiment with n foci owns n - 1 slots from focus_info[f][4] on, in each
// permutation's n_slots; overlap_count[pair] says how many it filled.
extern "C" __global__ void gpuale_overlap_lists(int n_perm, int n_foci, const int* focus_pos,
                                                const int* focus_info, long long n_slots,
                                                int* overlap_count,
                                                unsigned int* overlap_list) {
    const long long n_pairs = (long long)n_perm * n_foci;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x; pair < n_pairs;
         pair += stride) {
        const long long b = pair / n_foci;
        const int focus = (int)(pair - b * n_foci);
        const int* info = focus_info + (long long)focus * GPUALE_INFO_WORDS;
        const int first = info[0];
        const int stop = info[1];
        const int reach = info[3] - 1;  // boxes of side s overlap iff centres are < s apart
        const int* pos = focus_pos + pair * GPUALE_POS_WORDS;
        const int* others = focus_pos + b * n_foci * GPUALE_POS_WORDS;
        unsigned int* out = overlap_list + b * n_slots + info[4];
        int n = 0;
        for (int g = first; g < stop; ++g) {
            if (g == focus) continue;
            const int* q = others + (long long)g * GPUALE_POS_WORDS;
            const int da = q[0] - pos[0];
            const int dc = q[1] - pos[1];
            const int de = q[2] - pos[2];
            GPUALE_TALLY(GPUALE_TALLY_PAIR_TESTS, 1);
            if (da < -reach || da > reach || dc < -reach || dc > reach || de < -reach ||
                de > reach)
                continue;
            out[n++] = (unsigned int)(da + GPUALE_OVERLAP_BIAS) |
                       ((unsigned int)(dc + GPUALE_OVERLAP_BIAS) << 8) |
                       ((unsigned int)(de + GPUALE_OVERLAP_BIAS) << 16) |
                       (g < focus ? GPUALE_OVERLAP_FIRST : 0u);
        }
        overlap_count[pair] = n;
        GPUALE_TALLY(GPUALE_TALLY_PAIRS, 1);
        GPUALE_TALLY(GPUALE_TALLY_OVERLAPS, n);
    }
}

// The kernel box of one (permutation, focus) pair as the scatter walks it: a column along
// i at each (c, e) of its side x side face. The i range is clipped to the volume once per
// box; a column outside the volume in j or k is skipped by one test.
struct gpuale_pair_box {
    const unsigned long long* table;  // the focus's kernel: -log1p(-K) in fixed point
    const unsigned int* overlaps;     // its overlap list
    unsigned long long* total;        // its permutation's log-sums
    int n_overlaps;
    int side;
    int i0, a0, ni;  // first in-volume i, its kernel coordinate, in-volume length along i
    int j0, k0;      // j and k of face coordinate (0, 0), maybe outside the volume
};

// Pair (b, focus) = b * n_foci + focus.
__device__ __forceinline__ void gpuale_load_pair_box(
    gpuale_pair_box* box, long long b, int focus, int n_foci, const int* focus_pos,
    const int* focus_info, const int* overlap_count, const unsigned int* overlap_list,
    long long n_slots, const unsigned long long* neg_log_table, int nx, int n_mask,
    unsigned long long* neg_log_sum) {
    const long long pair = b * n_foci + focus;
    GPUALE_TALLY(GPUALE_TALLY_PAIR_LOADS, 1);
    const int* pos = focus_pos + pair * GPUALE_POS_WORDS;
    const int* info = focus_info + (long long)focus * GPUALE_INFO_WORDS;
    const int side = info[3];
    const int radius = side / 2;
    const int start = pos[0] - radius;
    const int stop = pos[0] + radius + 1 < nx ? pos[0] + radius + 1 : nx;
    box->i0 = start > 0 ? start : 0;
    box->a0 = box->i0 - start;
    box->ni = stop > box->i0 ? stop - box->i0 : 0;
    box->j0 = pos[1] - radius;
    box->k0 = pos[2] - radius;
    box->side = side;
    box->table = neg_log_table + info[2];
    box->overlaps = overlap_list + b * n_slots + info[4];
    box->n_overlaps = overlap_count[pair];
    box->total = neg_log_sum + b * n_mask;
}

// Whether the focus of a box takes voxel (a, c, e) of its box (kernel index `index`, its
// kernel value `value`) from the foci of its experiment whose boxes overlap its own: the
// entries in `cover` (those whose boxes hold the column) are tested with one range check
// along i, entries past the first GPUALE_OVERLAP_MASKED on all three axes.
__device__ __forceinline__ bool gpuale_wins(const gpuale_pair_box& box, unsigned long long cover,
                                            int a, int c, int e, int index,
                                            unsigned long long value) {
    const int side = box.side;
    bool wins = true;
    for (unsigned long long rest = cover; rest != 0 && wins; rest &= rest - 1) {
        const unsigned int entry = box.overlaps[__ffsll((long long)rest) - 1];
        const int da = (int)(entry & 0xFFu) - GPUALE_OVERLAP_BIAS;
        GPUALE_TALLY(GPUALE_TALLY_VOXEL_TESTS, 1);
        if ((unsigned int)(a - da) >= (unsigned int)side) continue;
        GPUALE_TALLY(GPUALE_TALLY_CONTESTS, 1);
        const int dc = (int)((entry >> 8) & 0xFFu) - GPUALE_OVERLAP_BIAS;
        const int de = (int)((entry >> 16) & 0xFFu) - GPUALE_OVERLAP_BIAS;
        const unsigned long long other = box.table[index - (da * side + dc) * side - de];
        wins = value > other || (value == other && !(entry & GPUALE_OVERLAP_FIRST));
    }
    for (int q = GPUALE_OVERLAP_MASKED; q < box.n_overlaps && wins; ++q) {
        const unsigned int entry = box.overlaps[q];
        const int da = (int)(entry & 0xFFu) - GPUALE_OVERLAP_BIAS;
        const int dc = (int)((entry >> 8) & 0xFFu) - GPUALE_OVERLAP_BIAS;
        const int de = (int)((entry >> 16) & 0xFFu) - GPUALE_OVERLAP_BIAS;
        GPUALE_TALLY(GPUALE_TALLY_VOXEL_TESTS, 1);
        if ((unsigned int)(a - da) >= (unsigned int)side ||
            (unsigned int)(c - dc) >= (unsigned int)side ||
            (unsigned int)(e - de) >= (unsigned int)side)
            continue;
        GPUALE_TALLY(GPUALE_TALLY_CONTESTS, 1);
        const unsigned long long other = box.table[index - (da * side + dc) * side - de];
        wins = value > other || (value == other && !(entry & GPUALE_OVERLAP_FIRST));
    }
    return wins;
}

// Voxels of a column whose loads a lane issues together. Each voxel needs its compact index
// (vox_to_mask) and its kernel value; one after the other, each voxel would wait for its
// two loads after the previous voxel's atomic addition (the compiler cannot move a load
// above an atomic that may write the same memory). Loaded GPUALE_SCATTER_UNROLL at a time
// from read-only memory (__ldg), a column of n voxels waits ceil(n / GPUALE_SCATTER_UNROLL)
// times instead of 2n. The kernel value is loaded for out-of-mask voxels too (it is in the
// box, and mostly an L1 hit), so that both loads of a round go out together. 6: a column
// of a side-17 box (N = 20) is 3 rounds, 93% of the slots used on the example data sets
// (bench/work_counts.py; 4 needs 5 rounds, 8 spills under the launch bounds below).
#ifndef GPUALE_SCATTER_UNROLL
#define GPUALE_SCATTER_UNROLL 6
#endif
// Launch bounds of the scatter: blocks of at most GPUALE_SCATTER_THREADS threads
// (SCATTER_SHAPE in gpuale/engines/cuda.py: 32 lanes x 8 teams), at least
// GPUALE_SCATTER_MIN_BLOCKS of them resident per SM, which caps it at 64 registers
// (32 of 64 warps on sm_80/sm_90) with no spills (nvcc -Xptxas -v, bench/RESULTS.md).
#ifndef GPUALE_SCATTER_THREADS
#define GPUALE_SCATTER_THREADS 256
#endif
#ifndef GPUALE_SCATTER_MIN_BLOCKS
#define GPUALE_SCATTER_MIN_BLOCKS 4
#endif

// Column (c, e) of a box: the voxels (i, j0 + c, k0 + e) for every in-volume i. The
// overlap entries whose boxes hold the column are found once (a bit mask); at each
// stamped voxel only those are tested, each with one range check along i. The additions
// are the same, in the same order, as one voxel at a time: only the loads move earlier.
__device__ __forceinline__ void gpuale_scatter_column(const gpuale_pair_box& box, int c, int e,
                                                      int ny, int nz,
                                                      const int* vox_to_mask) {
    const int j = box.j0 + c;
    const int k = box.k0 + e;
    if ((unsigned int)j >= (unsigned int)ny || (unsigned int)k >= (unsigned int)nz) return;
    const int side = box.side;
    const int masked =
        box.n_overlaps < GPUALE_OVERLAP_MASKED ? box.n_overlaps : GPUALE_OVERLAP_MASKED;
    unsigned long long cover = 0;
    for (int q = 0; q < masked; ++q) {
        const unsigned int entry = box.overlaps[q];
        const int gc = c - ((int)((entry >> 8) & 0xFFu) - GPUALE_OVERLAP_BIAS);
        const int ge = e - ((int)((entry >> 16) & 0xFFu) - GPUALE_OVERLAP_BIAS);
        if ((unsigned int)gc < (unsigned int)side && (unsigned int)ge < (unsigned int)side)
            cover |= 1ull << q;
    }
    GPUALE_TALLY(GPUALE_TALLY_COLUMNS, 1);
    GPUALE_TALLY(GPUALE_TALLY_COLUMN_TESTS, masked);
    GPUALE_TALLY(GPUALE_TALLY_BOX_VOXELS, box.ni);
    const long long plane = (long long)ny * nz;
    const int face = side * side;
    const int end = box.a0 + box.ni;
    long long flat = ((long long)box.i0 * ny + j) * nz + k;
    int index = (box.a0 * side + c) * side + e;
    for (int a = box.a0; a < end; a += GPUALE_SCATTER_UNROLL,
             flat += GPUALE_SCATTER_UNROLL * plane, index += GPUALE_SCATTER_UNROLL * face) {
        GPUALE_TALLY(GPUALE_TALLY_WALK_ROUNDS, 1);
        int m[GPUALE_SCATTER_UNROLL];
        unsigned long long value[GPUALE_SCATTER_UNROLL];
#pragma unroll
        for (int u = 0; u < GPUALE_SCATTER_UNROLL; ++u) {
            const bool inside = a + u < end;
            m[u] = inside ? __ldg(vox_to_mask + flat + u * plane) : -1;
            value[u] = inside ? __ldg(box.table + index + u * face) : 0ull;
        }
#pragma unroll
        for (int u = 0; u < GPUALE_SCATTER_UNROLL; ++u) {
            if (m[u] < 0) continue;  // out-of-mask voxels are never added to
            GPUALE_TALLY(GPUALE_TALLY_STAMPS, 1);
            if (gpuale_wins(box, cover, a + u, c, e, index + u * face, value[u])) {
                GPUALE_TALLY(GPUALE_TALLY_STAMP_ADDS, 1);
                atomicAdd(&box.total[m[u]], value[u]);
            }
        }
    }
}

// (c) Batched log-sum, by scatter: each (permutation, focus) pair stamps its kernel box.
//
// Why scatter and not gather-per-voxel: the foci move every permutation, so a voxel that
// gathers would first need a per-permutation spatial index of the foci, and would then
// still visit every in-mask voxel (228k on MNI 2 mm) although the boxes cover a fraction
// of them for small meta-analyses. Scatter does only the work that exists: one atomic
// addition per in-mask box voxel an experiment's focus wins, spread over distinct
// addresses and coalesced along k; integer atomics keep the result independent of order.
//
// Launch shape. The box faces of one permutation's foci, side x side columns each, are
// numbered one after another (focus_info[f][5] is where focus f's start; perm_columns in
// all), and cut into chunks of chunk_columns; chunk_focus[c] is the focus that holds the
// first column of chunk c. A team of blockDim.x lanes (32: one warp) takes one chunk;
// teams are numbered blockIdx.x * blockDim.y + threadIdx.y over (permutation, chunk) in
// permutation-major order, so the blocks resident at one time add into the log-sums of
// about (resident warps x chunk_columns) / perm_columns permutations, which stay in L2
// (adults: ~2 permutations, 4 MB, on an H100). Lane l takes columns l, l + lanes, ... of
// the chunk, running from one box into the next: every chunk is the same work whatever
// the boxes' sizes, and lanes idle only on columns outside the volume and in the last,
// short chunk of a permutation. Each column is walked along i with two additions per
// voxel (the flat index and the kernel index); the divisions are once per chunk and once
// per box a lane enters.
extern "C" __global__ void __launch_bounds__(GPUALE_SCATTER_THREADS, GPUALE_SCATTER_MIN_BLOCKS)
gpuale_log_sum_scatter(
    int n_perm, int n_foci, int chunk_columns, int perm_columns, const int* chunk_focus,
    const int* focus_pos, const int* focus_info, const int* overlap_count,
    const unsigned int* overlap_list, long long n_slots,
    const unsigned long long* neg_log_table, int nx, int ny, int nz, const int* vox_to_mask,
    int n_mask, unsigned long long* neg_log_sum) {
    const int chunks_per_perm = (perm_columns + chunk_columns - 1) / chunk_columns;
    const long long n_chunks = (long long)n_perm * chunks_per_perm;
    const long long n_teams = (long long)gridDim.x * blockDim.y;
    const int lanes = (int)blockDim.x;
    for (long long team = (long long)blockIdx.x * blockDim.y + threadIdx.y; team < n_chunks;
         team += n_teams) {
        const long long b = team / chunks_per_perm;
        const int chunk = (int)(team - b * chunks_per_perm);
        // first + chunk_columns + 1024 < 2^31: the host checks.
        const int first = chunk * chunk_columns;
        const int stop = perm_columns - first > chunk_columns ? first + chunk_columns
                                                               : perm_columns;
        int focus = chunk_focus[chunk];
        // Columns from the start of focus's face to this lane's next column.
        int offset = first + (int)threadIdx.x -
                     focus_info[(long long)focus * GPUALE_INFO_WORDS + 5];
        gpuale_pair_box box;
        int c = 0, e = 0, step_c = 0, step_e = 0;
        long long rounds = 0;
        bool moved = true;
        for (long long column = first + threadIdx.x; column < stop; column += lanes) {
            if (moved) {  // the lane entered another box: find it and load it
                int side = focus_info[(long long)focus * GPUALE_INFO_WORDS + 3];
                while (offset >= side * side) {
                    offset -= side * side;
                    ++focus;
                    side = focus_info[(long long)focus * GPUALE_INFO_WORDS + 3];
                }
                gpuale_load_pair_box(&box, b, focus, n_foci, focus_pos, focus_info,
                                     overlap_count, overlap_list, n_slots, neg_log_table, nx,
                                     n_mask, neg_log_sum);
                c = offset / side;
                e = offset - c * side;
                step_c = lanes / side;
                step_e = lanes - step_c * side;
                moved = false;
            }
            gpuale_scatter_column(box, c, e, ny, nz, vox_to_mask);
            ++rounds;
            e += step_e;
            c += step_c;
            if (e >= box.side) {
                e -= box.side;
                ++c;
            }
            if (c >= box.side) {  // past this box: the rest of the step lands in the next
                offset = (c - box.side) * box.side + e;
                ++focus;
                moved = true;
            }
        }
        if (threadIdx.x == 0) GPUALE_TALLY(GPUALE_TALLY_TEAM_ROUNDS, rounds);
        (void)rounds;
    }
}

// (d) Per permutation, max -S over the mask (= max ALE), and the compact list of its
// supra-threshold voxels (-S >= cut): each becomes its own cluster (label = its compact
// index) with empty accumulators. The labelling, accumulation and maxima passes read the
// list instead of every in-mask voxel; the labels and accumulators of other voxels are
// never written or read.
extern "C" __global__ void gpuale_threshold_compact(int n_perm, int n_mask,
                                                    unsigned long long cut,
                                                    const unsigned long long* neg_log_sum,
                                                    unsigned long long* max_neg_log_sum,
                                                    int* supra_count, int* supra_list,
                                                    int* label, unsigned int* size,
                                                    unsigned long long* mass) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        for (long long m = (long long)blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += stride) {
            GPUALE_TALLY(GPUALE_TALLY_MASK_VOXELS, 1);
            const unsigned long long d = neg_log_sum[base + m];
            // A relaxed read first: most voxels are below the running maximum, and skipping
            // their atomics avoids serialising n_mask atomics on one address. A stale value
            // only costs an atomic that changes nothing.
            if (d > gpuale_ld_relaxed(&max_neg_log_sum[b])) atomicMax(&max_neg_log_sum[b], d);
            if (d < cut) continue;
            GPUALE_TALLY(GPUALE_TALLY_SUPRA, 1);
            const int slot = atomicAdd(&supra_count[b], 1);
            supra_list[base + slot] = (int)m;
            label[base + m] = (int)m;
            size[base + m] = 0u;
            mass[base + m] = 0ull;
        }
    }
}

// Root of x's tree. Labels only ever point to smaller indices, so even an older value is
// a valid ancestor and the walk ends.
__device__ __forceinline__ int gpuale_find_root(const int* label, int x) {
    for (;;) {
        GPUALE_TALLY(GPUALE_TALLY_ROOT_STEPS, 1);
        const int parent = gpuale_ld_relaxed(&label[x]);
        if (parent == x) return x;
        x = parent;
    }
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

// (e, merge). Each listed voxel unions with its supra-threshold neighbours that come
// before it in the lattice (the 3, 9 or 13 of the 27-cube codes below the centre): every
// neighbour pair is visited once. A neighbour is supra-threshold iff its -S >= cut, the
// same test that listed it. connectivity: 6 (faces), 18 (+ edges), 26 (+ corners).
extern "C" __global__ void gpuale_label_merge(int n_perm, int n_mask, unsigned long long cut,
                                              const int* supra_count, const int* supra_list,
                                              const unsigned long long* neg_log_sum,
                                              const int* in_mask_flat,
                                              const int* vox_to_mask, int nx, int ny, int nz,
                                              int connectivity, int* label) {
    const int reach = connectivity == 6 ? 1 : (connectivity == 18 ? 2 : 3);
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        const long long count = supra_count[b];
        int* perm_label = label + base;
        const unsigned long long* sums = neg_log_sum + base;
        for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < count;
             s += stride) {
            const int m = supra_list[base + s];
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
                const int n = vox_to_mask[((long long)ni * ny + nj) * nz + nk];
                if (n < 0) continue;
                GPUALE_TALLY(GPUALE_TALLY_NEIGHBOURS, 1);
                if (sums[n] < cut) continue;
                GPUALE_TALLY(GPUALE_TALLY_UNIONS, 1);
                gpuale_union(perm_label, m, n);
            }
        }
    }
}

// (e, path compression). Afterwards every listed label is its root.
extern "C" __global__ void gpuale_label_compress(int n_perm, int n_mask,
                                                 const int* supra_count,
                                                 const int* supra_list, int* label) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        const long long count = supra_count[b];
        int* perm_label = label + base;
        for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < count;
             s += stride) {
            const int m = supra_list[base + s];
            // Other threads walk through label[m] while this one shortens it: relaxed.
            gpuale_st_relaxed(&perm_label[m], gpuale_find_root(perm_label, m));
        }
    }
}

// (e, sizes and masses). Every listed voxel adds 1 and its excess into its root, whose
// accumulators the threshold pass emptied.
extern "C" __global__ void gpuale_cluster_accumulate(int n_perm, int n_mask, double threshold,
                                                     const int* supra_count,
                                                     const int* supra_list,
                                                     const unsigned long long* neg_log_sum,
                                                     const int* label, unsigned int* size,
                                                     unsigned long long* mass) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        const long long count = supra_count[b];
        for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < count;
             s += stride) {
            const int m = supra_list[base + s];
            const long long root = base + label[base + m];
            atomicAdd(&size[root], 1u);
            atomicAdd(&mass[root], gpuale_mass_excess(neg_log_sum[base + m], threshold));
        }
    }
}

// (e, maxima). Largest cluster size and mass of each permutation (0 when none).
extern "C" __global__ void gpuale_cluster_maxima(int n_perm, int n_mask, const int* supra_count,
                                                 const int* supra_list, const int* label,
                                                 const unsigned int* size,
                                                 const unsigned long long* mass,
                                                 unsigned int* max_size,
                                                 unsigned long long* max_mass) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        const long long count = supra_count[b];
        for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < count;
             s += stride) {
            const long long m = supra_list[base + s];
            if (label[base + m] != m) continue;  // roots only
            const unsigned int cluster_size = size[base + m];
            const unsigned long long cluster_mass = mass[base + m];
            // Relaxed reads, as in the threshold pass: a stale maximum costs one atomic.
            if (cluster_size > gpuale_ld_relaxed(&max_size[b]))
                atomicMax(&max_size[b], cluster_size);
            if (cluster_mass > gpuale_ld_relaxed(&max_mass[b]))
                atomicMax(&max_mass[b], cluster_mass);
        }
    }
}

// The three numbers per permutation in the types null_batch returns. Writes every element.
extern "C" __global__ void gpuale_finish(int n_perm, const unsigned long long* max_neg_log_sum,
                                         const unsigned int* max_size,
                                         const unsigned long long* max_mass, double* max_ale_out,
                                         long long* max_size_out, double* max_mass_out) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < n_perm;
         b += stride) {
        max_ale_out[b] = (double)gpuale_ale_from_neg_log_sum(max_neg_log_sum[b]);
        max_size_out[b] = (long long)max_size[b];
        max_mass_out[b] = (double)max_mass[b] * GPUALE_MASS_UNIT;
    }
}

// SCALE (a). focus_pos[(b * n_foci + j) * 4 + (0, 1, 2, 3)] = (i, j, k, flat) of database
// focus pool_ijk[gpuale_pool_draw(seed, first + b, j, n_pool)] (gpuale.rng.pool_draws).
// Database foci may lie off the grid (NiMARE keeps them, unclamped): their flat word is
// -1, which nothing reads; the scatter clips every box to the volume.
extern "C" __global__ void gpuale_scale_draw_foci(unsigned int seed_lo, unsigned int seed_hi,
                                                  unsigned int first_permutation, int n_perm,
                                                  int n_foci, unsigned int n_pool,
                                                  const int* pool_ijk, int nx, int ny, int nz,
                                                  int* focus_pos) {
    const long long n_draws = (long long)n_perm * n_foci;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_draws;
         t += stride) {
        const long long b = t / n_foci;
        const int focus = (int)(t - b * n_foci);
        const unsigned int choice =
            gpuale_pool_draw(seed_lo, seed_hi, first_permutation + (unsigned int)b,
                             (unsigned int)focus, n_pool);
        const int* at = pool_ijk + (long long)choice * 3;
        const int i = at[0], j = at[1], k = at[2];
        int* out = focus_pos + t * GPUALE_POS_WORDS;
        out[0] = i;
        out[1] = j;
        out[2] = k;
        const bool inside = (unsigned int)i < (unsigned int)nx &&
                            (unsigned int)j < (unsigned int)ny && (unsigned int)k < (unsigned int)nz;
        out[3] = inside ? (i * ny + j) * nz + k : -1;
    }
}

// SCALE (b). counts[m] += #{b : neg_log_sum[b][m] >= observed[m]} and max_neg_log_sum[b] =
// max_m neg_log_sum[b][m] (zeroed by the host). Integer comparisons of fixed-point sums:
// every engine counts the same permutations, ties included.
extern "C" __global__ void gpuale_scale_exceed(int n_perm, int n_mask,
                                               const unsigned long long* neg_log_sum,
                                               const unsigned long long* observed,
                                               unsigned int* counts,
                                               unsigned long long* max_neg_log_sum) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long b = blockIdx.y; b < n_perm; b += gridDim.y) {
        const long long base = b * n_mask;
        for (long long m = (long long)blockIdx.x * blockDim.x + threadIdx.x; m < n_mask;
             m += stride) {
            const unsigned long long d = neg_log_sum[base + m];
            // A relaxed read first, as gpuale_threshold_compact: most voxels are below the
            // running maximum.
            if (d > gpuale_ld_relaxed(&max_neg_log_sum[b])) atomicMax(&max_neg_log_sum[b], d);
            if (d >= observed[m]) atomicAdd(&counts[m], 1u);
        }
    }
}

// CBP. out[row * n_mask + m] = the largest rank any focus of experiment ``row`` stamps on
// in-mask voxel m (zeroed by the host): a rank is the 1-based position of a kernel value
// among that kernel's sorted distinct values (0: untouched), so the largest rank is the
// MA, as NumpyEngine.observed_ale stamps it (_KernelRanks), and the host looks up
// log1p(-MA) in the same float32 table the numpy engine uses. Integer maxima: any order
// of the atomics gives the same ranks. One thread per kernel-box column (a, b) of a focus,
// down its k line; focus[f * 6 + (0 .. 5)] = (i, j, k, row, start of its kernel's ranks,
// side), first_column[f] = the first of its side * side columns (first_column[n_foci]:
// their number). Boxes are clipped to the volume; voxels outside the mask map to -1.
extern "C" __global__ void gpuale_pool_ranks(int n_foci, const int* focus,
                                             const long long* first_column, const int* ranks,
                                             int nx, int ny, int nz, const int* vox_to_mask,
                                             int n_mask, int* out) {
    const long long n_columns = first_column[n_foci];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n_columns;
         t += stride) {
        int lo = 0, hi = n_foci - 1;  // the last focus whose first column is <= t
        while (lo < hi) {
            const int mid = lo + (hi - lo + 1) / 2;
            if (first_column[mid] <= t) lo = mid; else hi = mid - 1;
        }
        const int* f = focus + (long long)lo * 6;
        const int side = f[5], half = side / 2;
        const long long c = t - first_column[lo];
        const int a = (int)(c / side), b = (int)(c - (long long)a * side);
        const int i = f[0] + a - half, j = f[1] + b - half;
        if ((unsigned int)i >= (unsigned int)nx || (unsigned int)j >= (unsigned int)ny) continue;
        const int* line = ranks + f[4] + ((long long)a * side + b) * side;
        int* row = out + (long long)f[3] * n_mask;
        const long long base = ((long long)i * ny + j) * nz;
        for (int d = 0; d < side; ++d) {
            const int k = f[2] + d - half;
            if ((unsigned int)k >= (unsigned int)nz) continue;
            const int m = vox_to_mask[base + k];
            const int r = line[d];
            if (m < 0 || r == 0) continue;
            // A relaxed read first, as gpuale_scale_exceed: most stamps lose.
            if (r > gpuale_ld_relaxed(&row[m])) atomicMax(&row[m], r);
        }
    }
}
