// Relaxed atomic loads and stores of words that other threads update with atomics.
//
// Union-find labels, running maxima and cluster counts are read by some threads while
// others change them with atomicMin / atomicMax / atomicAdd. A plain load or store of such
// a word is a data race, which is undefined behaviour in CUDA C++ even where the algorithm
// tolerates the stale value it may return. A relaxed atomic access at device scope is
// what makes it defined (it may still return an older value, never a torn one), and it
// costs what a plain access costs.
//
// Why inline PTX and not cuda::atomic_ref: it is exactly what
// cuda::atomic_ref<T, cuda::thread_scope_device>::load(cuda::memory_order_relaxed) emits,
// but it needs no libcu++ headers, which NVRTC (CuPy's RawModule) only finds where a CUDA
// toolkit or CuPy's bundled CCCL is on its include path. ld/st.relaxed need sm_70; older
// cards get volatile accesses, which PTX treats as relaxed at system scope. The "memory"
// clobber keeps the compiler from moving other memory accesses of this thread across them.
//
// kernels/host_shim.h defines the same functions for the host: plain relaxed accesses in
// its sequential mode, and switch points with an older-value model in its fiber mode.
#ifndef GPUALE_RELAXED_CUH
#define GPUALE_RELAXED_CUH

#ifndef GPUALE_HOST_SHIM

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define GPUALE_RELAXED_LD32 "ld.relaxed.gpu.b32 %0, [%1];"
#define GPUALE_RELAXED_LD64 "ld.relaxed.gpu.b64 %0, [%1];"
#define GPUALE_RELAXED_ST32 "st.relaxed.gpu.b32 [%0], %1;"
#define GPUALE_RELAXED_ST64 "st.relaxed.gpu.b64 [%0], %1;"
#else
#define GPUALE_RELAXED_LD32 "ld.volatile.b32 %0, [%1];"
#define GPUALE_RELAXED_LD64 "ld.volatile.b64 %0, [%1];"
#define GPUALE_RELAXED_ST32 "st.volatile.b32 [%0], %1;"
#define GPUALE_RELAXED_ST64 "st.volatile.b64 [%0], %1;"
#endif

__device__ __forceinline__ int gpuale_ld_relaxed(const int* p) {
    int v;
    asm volatile(GPUALE_RELAXED_LD32 : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned int gpuale_ld_relaxed(const unsigned int* p) {
    unsigned int v;
    asm volatile(GPUALE_RELAXED_LD32 : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long gpuale_ld_relaxed(const unsigned long long* p) {
    unsigned long long v;
    asm volatile(GPUALE_RELAXED_LD64 : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void gpuale_st_relaxed(int* p, int v) {
    asm volatile(GPUALE_RELAXED_ST32 : : "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void gpuale_st_relaxed(unsigned int* p, unsigned int v) {
    asm volatile(GPUALE_RELAXED_ST32 : : "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void gpuale_st_relaxed(unsigned long long* p, unsigned long long v) {
    asm volatile(GPUALE_RELAXED_ST64 : : "l"(p), "l"(v) : "memory");
}

#endif  // GPUALE_HOST_SHIM

#endif  // GPUALE_RELAXED_CUH
