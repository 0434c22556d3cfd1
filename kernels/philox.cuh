// Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", SC'11)
// and the integer mapping gpuale uses to pick a voxel. Bit-identical to gpuale/rng.py:
// the voxel of focus j in permutation i depends only on (seed, i, j), so CPU and GPU,
// and any batch size or worker split, give the same null distribution.
//
// Plain C++ with 64-bit products instead of __umulhi, so the same code runs on the host
// (kernels/host_shim.h) and in NVRTC/nvcc device code. nvcc turns the 32x32->64 products
// into single mul.wide.u32 instructions, so nothing is lost on the device.
#ifndef GPUALE_PHILOX_CUH
#define GPUALE_PHILOX_CUH

#define GPUALE_PHILOX_M0 0xD2511F53u
#define GPUALE_PHILOX_M1 0xCD9E8D57u
#define GPUALE_PHILOX_W0 0x9E3779B9u  // golden ratio
#define GPUALE_PHILOX_W1 0xBB67AE85u  // sqrt(3) - 1
#define GPUALE_PHILOX_ROUNDS 10

// Counter stream words (gpuale.rng.STREAM_*).
#define GPUALE_STREAM_RELOCATE_FOCI 0u
// gpuale.rng.STREAM_SCALE_POOL: SCALE's draws of database foci.
#define GPUALE_STREAM_SCALE_POOL 8u
#define GPUALE_STREAM_CONTRAST_SPLIT 1u

struct gpuale_u32x4 {
    unsigned int x, y, z, w;
};

// Philox4x32-10 of one counter under the 64-bit key (k0 = low word, k1 = high word).
__host__ __device__ __forceinline__ gpuale_u32x4 gpuale_philox4x32_10(gpuale_u32x4 ctr,
                                                                      unsigned int k0,
                                                                      unsigned int k1) {
    for (int round = 0; round < GPUALE_PHILOX_ROUNDS; ++round) {
        if (round) {
            k0 += GPUALE_PHILOX_W0;
            k1 += GPUALE_PHILOX_W1;
        }
        const unsigned long long p0 = (unsigned long long)GPUALE_PHILOX_M0 * ctr.x;
        const unsigned long long p1 = (unsigned long long)GPUALE_PHILOX_M1 * ctr.z;
        gpuale_u32x4 next;
        next.x = (unsigned int)(p1 >> 32) ^ ctr.y ^ k0;
        next.y = (unsigned int)p1;
        next.z = (unsigned int)(p0 >> 32) ^ ctr.w ^ k1;
        next.w = (unsigned int)p0;
        ctr = next;
    }
    return ctr;
}

// floor(u * n / 2^64) for u = (w1 << 32) | w0, exactly, for 0 < n < 2^32: neither partial
// product overflows and hi * n + carry < 2^64 (the same steps as gpuale.rng.uniform_below).
__host__ __device__ __forceinline__ unsigned int gpuale_uniform_below(unsigned int w0,
                                                                     unsigned int w1,
                                                                     unsigned int n) {
    const unsigned long long carry = ((unsigned long long)w0 * n) >> 32;
    return (unsigned int)(((unsigned long long)w1 * n + carry) >> 32);
}

// The draw of gpuale.rng.relocation_draws: a choice in [0, n) for focus j of permutation i.
__host__ __device__ __forceinline__ unsigned int gpuale_relocation_draw(
    unsigned int seed_lo, unsigned int seed_hi, unsigned int permutation, unsigned int focus,
    unsigned int n) {
    gpuale_u32x4 ctr;
    ctr.x = focus;
    ctr.y = permutation;
    ctr.z = GPUALE_STREAM_RELOCATE_FOCI;
    ctr.w = 0u;
    const gpuale_u32x4 words = gpuale_philox4x32_10(ctr, seed_lo, seed_hi);
    return gpuale_uniform_below(words.x, words.y, n);
}

// The draw of gpuale.rng.pool_draws: the database focus (in [0, n_pool)) whose position
// focus j takes in SCALE's permutation i.
__host__ __device__ __forceinline__ unsigned int gpuale_pool_draw(
    unsigned int seed_lo, unsigned int seed_hi, unsigned int permutation, unsigned int focus,
    unsigned int n_pool) {
    gpuale_u32x4 ctr;
    ctr.x = focus;
    ctr.y = permutation;
    ctr.z = GPUALE_STREAM_SCALE_POOL;
    ctr.w = 0u;
    const gpuale_u32x4 words = gpuale_philox4x32_10(ctr, seed_lo, seed_hi);
    return gpuale_uniform_below(words.x, words.y, n_pool);
}

#endif  // GPUALE_PHILOX_CUH
