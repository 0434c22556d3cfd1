// Compile kernels/*.cu as ordinary C++ and run a launch sequentially on the host, so the
// kernels can be tested against the numpy twin on machines without a GPU. Used through
// gpuale/_hostshim.py: g++ -include host_shim.h. Only kernels without block-level
// cooperation (no shared memory, no __syncthreads, no warp intrinsics) can run here: every
// "thread" runs to completion before the next starts.
#ifndef GPUALE_HOST_SHIM_H
#define GPUALE_HOST_SHIM_H

#include <cmath>
#include <cstddef>
#include <utility>

#define GPUALE_HOST_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

using std::exp;
using std::log1p;
using std::rint;

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// thread_local: ctypes releases the GIL, so two Python threads may launch at once.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// Atomics are plain read-modify-writes: only one thread runs at a time.
template <typename T>
inline T gpuale_host_atomic_add(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T gpuale_host_atomic_min(T* p, T v) {
    const T old = *p;
    if (v < old) *p = v;
    return old;
}
template <typename T>
inline T gpuale_host_atomic_max(T* p, T v) {
    const T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T>
inline T gpuale_host_atomic_cas(T* p, T compare, T v) {
    const T old = *p;
    if (old == compare) *p = v;
    return old;
}
template <typename T>
inline T gpuale_host_atomic_exch(T* p, T v) {
    const T old = *p;
    *p = v;
    return old;
}

// The overloads CUDA provides for the types gpuale uses (no others, so a call that would
// not compile for the device does not compile here either).
#define GPUALE_HOST_ATOMICS(T)                                                    \
    inline T atomicAdd(T* p, T v) { return gpuale_host_atomic_add(p, v); }        \
    inline T atomicMin(T* p, T v) { return gpuale_host_atomic_min(p, v); }        \
    inline T atomicMax(T* p, T v) { return gpuale_host_atomic_max(p, v); }        \
    inline T atomicCAS(T* p, T c, T v) { return gpuale_host_atomic_cas(p, c, v); } \
    inline T atomicExch(T* p, T v) { return gpuale_host_atomic_exch(p, v); }
GPUALE_HOST_ATOMICS(int)
GPUALE_HOST_ATOMICS(unsigned int)
GPUALE_HOST_ATOMICS(unsigned long long)
GPUALE_HOST_ATOMICS(long long)
#undef GPUALE_HOST_ATOMICS
inline float atomicAdd(float* p, float v) { return gpuale_host_atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return gpuale_host_atomic_add(p, v); }

inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    __builtin_memcpy(&u, &x, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float x;
    __builtin_memcpy(&x, &u, sizeof x);
    return x;
}
inline int __float_as_int(float x) { return (int)__float_as_uint(x); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned int)i); }
inline long long __double_as_longlong(double x) {
    long long i;
    __builtin_memcpy(&i, &x, sizeof i);
    return i;
}
inline double __longlong_as_double(long long i) {
    double x;
    __builtin_memcpy(&x, &i, sizeof x);
    return x;
}

// Runs kernel(args...) for every thread of the grid, one after another. args[i] points at
// the value of parameter i (as for cuLaunchKernel).
template <typename... A, std::size_t... I>
inline void gpuale_host_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

template <typename... A>
inline void gpuale_host_launch(void (*kernel)(A...), const unsigned int* grid_block,
                               void** args) {
    gridDim = dim3{grid_block[0], grid_block[1], grid_block[2]};
    blockDim = dim3{grid_block[3], grid_block[4], grid_block[5]};
    for (blockIdx.z = 0; blockIdx.z < gridDim.z; ++blockIdx.z)
        for (blockIdx.y = 0; blockIdx.y < gridDim.y; ++blockIdx.y)
            for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)
                for (threadIdx.z = 0; threadIdx.z < blockDim.z; ++threadIdx.z)
                    for (threadIdx.y = 0; threadIdx.y < blockDim.y; ++threadIdx.y)
                        for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x)
                            gpuale_host_call(kernel, args, std::index_sequence_for<A...>{});
}

// Byte size of every parameter, so the caller can check what it passes.
template <typename... A>
inline int gpuale_host_param_sizes(void (*)(A...), unsigned int* sizes) {
    const unsigned int all[] = {static_cast<unsigned int>(sizeof(A))..., 0u};
    for (std::size_t i = 0; i < sizeof...(A); ++i) sizes[i] = all[i];
    return static_cast<int>(sizeof...(A));
}

// One C entry point pair per kernel; gpuale/_hostshim.py writes one line per kernel.
#define GPUALE_HOST_EXPORT(name)                                                     \
    extern "C" void gpuale_host_launch__##name(const unsigned int* grid_block,       \
                                               void** args) {                        \
        gpuale_host_launch(&name, grid_block, args);                                 \
    }                                                                                \
    extern "C" int gpuale_host_params__##name(unsigned int* sizes) {                 \
        return gpuale_host_param_sizes(&name, sizes);                                \
    }

#endif  // GPUALE_HOST_SHIM_H
