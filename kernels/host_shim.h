// Compile kernels/*.cu as ordinary C++ and run a launch on the host, so the kernels can be
// tested against the numpy twin on machines without a GPU. Used through
// gpuale/_hostshim.py: g++ -include host_shim.h [-DGPUALE_HOST_FIBERS] [-DGPUALE_HOST_TALLY].
//
// Sequential mode (the default): every "thread" of a launch runs to completion before the
// next starts, so kernels with block-level cooperation (__syncthreads) cannot run, and no
// race can show: it proves the arithmetic, not the concurrency.
//
// Fiber mode (GPUALE_HOST_FIBERS): every thread of the resident blocks is a fiber
// (ucontext), and a seeded random scheduler may switch to another fiber before and after
// every atomic, relaxed load and relaxed store, and switches at __syncthreads. A relaxed
// load may return an older value of its word (a per-word history of recent values, with
// per-fiber coherence: a fiber never reads a value older than one it has seen or
// written). That is what a GPU may do and the sequential mode never does: lost updates,
// check-then-act gaps, stale reads and dependence on thread order show up as wrong
// results (tests/test_kernels_concurrent.py). Plain loads and stores are not switch
// points: the kernels must reach words other threads update through atomics or
// relaxed.cuh, which is also what CUDA's memory model requires.
//
// Counting mode (GPUALE_HOST_TALLY): GPUALE_TALLY(counter, n) in the kernels adds n to a
// per-thread counter the host reads back (bench/work_counts.py).
#ifndef GPUALE_HOST_SHIM_H
#define GPUALE_HOST_SHIM_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#define GPUALE_HOST_SHIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

using std::exp;
using std::log1p;
using std::rint;

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

// thread_local: ctypes releases the GIL, so two Python threads may launch at once. In
// fiber mode the scheduler sets them to the running fiber's indices at every switch.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

inline int __ffsll(long long x) { return __builtin_ffsll(x); }
// A read-only load through the texture path on the device: a plain load here.
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

#ifdef GPUALE_HOST_TALLY
inline thread_local unsigned long long gpuale_host_tallies[64];
#define GPUALE_TALLY(counter, n) \
    ((void)(gpuale_host_tallies[(counter)] += (unsigned long long)(n)))
#endif

// ---------------------------------------------------------------------------------------
// Switch points and the older-value model (fiber mode); no-ops in the other modes.
#ifdef GPUALE_HOST_FIBERS
#include <ucontext.h>

#include <memory>
#include <unordered_map>
#include <vector>

namespace gpuale_fibers {

struct Config {
    unsigned long long seed = 0;
    double switch_probability = 0.5;  // at each switch point
    double stale_probability = 0.5;   // a relaxed load returns an older value
    int history = 4;                  // values kept per word (>= 1)
    int resident_blocks = 0;          // blocks whose threads interleave (0: all)
    int stack_bytes = 64 * 1024;
};

struct Stats {
    unsigned long long launches, fibers, switch_points, switches, atomics, relaxed_loads,
        stale_loads, relaxed_stores, barriers;
};

enum Status { OK = 0, DEADLOCK = 1 };

struct Fiber {
    ucontext_t context;
    uint3 thread, block;
    int slot;       // resident block slot
    int runnable;   // index in the runnable list, -1 when not runnable
    bool done;
    std::unordered_map<const void*, unsigned long long> seen;  // newest version read
};

struct Slot {
    std::vector<std::unique_ptr<Fiber>> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;
    int live = 0;     // fibers not done
    int arrived = 0;  // fibers waiting at __syncthreads
    bool busy = false;
};

// Recent values of one word, newest last; versions counts every value it ever had in
// this launch, so version v is values[v % history] while v > versions - history.
struct Word {
    std::vector<unsigned long long> values;
    unsigned long long versions = 0;
};

struct State {
    Config config;
    Stats stats{};
    unsigned long long rng[4];
    ucontext_t scheduler;
    Fiber* current = nullptr;
    std::vector<Fiber*> runnable;
    std::vector<Slot> slots;
    std::unordered_map<const void*, Word> words;
    void (*run)(void*) = nullptr;
    void* closure = nullptr;
};

inline thread_local State* state = nullptr;
inline thread_local Config config;
inline thread_local Stats totals{};
inline thread_local unsigned long long rng_state[4] = {1, 2, 3, 4};

// xoshiro256** (Blackman & Vigna): fast, seedable, good enough for scheduling.
inline unsigned long long next_random() {
    unsigned long long* s = rng_state;
    const unsigned long long result = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    const unsigned long long t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3] << 45 | s[3] >> 19;
    return result;
}
inline double uniform() { return (double)(next_random() >> 11) * (1.0 / 9007199254740992.0); }
inline unsigned long long below(unsigned long long n) { return next_random() % n; }

inline void seed(unsigned long long value) {
    for (auto& word : rng_state) {  // splitmix64
        value += 0x9E3779B97F4A7C15ull;
        unsigned long long z = value;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        word = z ^ (z >> 31);
    }
}

inline void make_runnable(Fiber* f) {
    f->runnable = (int)state->runnable.size();
    state->runnable.push_back(f);
}
inline void make_waiting(Fiber* f) {
    auto& list = state->runnable;
    Fiber* last = list.back();
    list[f->runnable] = last;
    last->runnable = f->runnable;
    list.pop_back();
    f->runnable = -1;
}

// Back to the scheduler; returns when it picks this fiber again.
inline void suspend() {
    Fiber* self = state->current;
    swapcontext(&self->context, &state->scheduler);
}

inline void switch_point() {
    if (state == nullptr) return;
    ++state->stats.switch_points;
    if (uniform() < state->config.switch_probability) {
        ++state->stats.switches;
        suspend();
    }
}

template <typename T>
inline unsigned long long bits_of(T v) {
    unsigned long long u = 0;
    std::memcpy(&u, &v, sizeof v);
    return u;
}
template <typename T>
inline T value_of(unsigned long long u) {
    T v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

// The word's history, brought up to date with memory: a plain store by some thread since
// the last recorded value becomes the newest version.
template <typename T>
inline Word& word_at(const T* p) {
    Word& w = state->words[p];
    const unsigned long long now = bits_of(*p);
    const int n = state->config.history;
    if (w.values.empty()) w.values.assign(n, 0);
    if (w.versions == 0 || w.values[(w.versions - 1) % n] != now) {
        w.values[w.versions % n] = now;
        ++w.versions;
    }
    return w;
}

template <typename T>
inline void record_store(T* p, T v) {
    Word& w = word_at(p);
    *p = v;
    const unsigned long long u = bits_of(v);
    const int n = state->config.history;
    if (w.values[(w.versions - 1) % n] != u) {
        w.values[w.versions % n] = u;
        ++w.versions;
    }
    state->current->seen[p] = w.versions - 1;
}

template <typename T>
inline T relaxed_load(const T* p) {
    ++state->stats.relaxed_loads;
    Word& w = word_at(p);
    const unsigned long long newest = w.versions - 1;
    const unsigned long long kept = (unsigned long long)state->config.history;
    unsigned long long oldest = w.versions > kept ? w.versions - kept : 0;
    auto seen = state->current->seen.find(p);
    if (seen != state->current->seen.end() && seen->second > oldest) oldest = seen->second;
    unsigned long long version = newest;
    if (oldest < newest && uniform() < state->config.stale_probability) {
        version = oldest + below(newest - oldest);  // strictly older than the newest
        ++state->stats.stale_loads;
    }
    state->current->seen[p] = version;
    return value_of<T>(w.values[version % kept]);
}

}  // namespace gpuale_fibers
#define GPUALE_HOST_SWITCH_POINT() gpuale_fibers::switch_point()
#define GPUALE_HOST_FIBER_ACTIVE() (gpuale_fibers::state != nullptr)
#else
#define GPUALE_HOST_SWITCH_POINT() ((void)0)
#define GPUALE_HOST_FIBER_ACTIVE() false
#endif  // GPUALE_HOST_FIBERS

// ---------------------------------------------------------------------------------------
// Atomics: a read-modify-write that no other thread can split (only one fiber runs at a
// time), with switch points before and after in fiber mode.
template <typename T, typename Op>
inline T gpuale_host_atomic(T* p, Op op) {
    GPUALE_HOST_SWITCH_POINT();
    const T old = *p;
#ifdef GPUALE_HOST_FIBERS
    if (GPUALE_HOST_FIBER_ACTIVE()) {
        ++gpuale_fibers::state->stats.atomics;
        gpuale_fibers::record_store(p, op(old));
    } else {
        *p = op(old);
    }
#else
    *p = op(old);
#endif
    GPUALE_HOST_SWITCH_POINT();
    return old;
}

// The overloads CUDA provides for the types gpuale uses (no others, so a call that would
// not compile for the device does not compile here either).
#define GPUALE_HOST_ATOMICS(T)                                                              \
    inline T atomicAdd(T* p, T v) {                                                         \
        return gpuale_host_atomic(p, [v](T old) { return (T)(old + v); });                  \
    }                                                                                       \
    inline T atomicMin(T* p, T v) {                                                         \
        return gpuale_host_atomic(p, [v](T old) { return v < old ? v : old; });             \
    }                                                                                       \
    inline T atomicMax(T* p, T v) {                                                         \
        return gpuale_host_atomic(p, [v](T old) { return v > old ? v : old; });             \
    }                                                                                       \
    inline T atomicCAS(T* p, T c, T v) {                                                    \
        return gpuale_host_atomic(p, [c, v](T old) { return old == c ? v : old; });         \
    }                                                                                       \
    inline T atomicExch(T* p, T v) {                                                        \
        return gpuale_host_atomic(p, [v](T) { return v; });                                 \
    }
GPUALE_HOST_ATOMICS(int)
GPUALE_HOST_ATOMICS(unsigned int)
GPUALE_HOST_ATOMICS(unsigned long long)
GPUALE_HOST_ATOMICS(long long)
#undef GPUALE_HOST_ATOMICS
inline float atomicAdd(float* p, float v) {
    return gpuale_host_atomic(p, [v](float old) { return old + v; });
}
inline double atomicAdd(double* p, double v) {
    return gpuale_host_atomic(p, [v](double old) { return old + v; });
}

// Relaxed loads and stores (kernels/relaxed.cuh on the device).
#define GPUALE_HOST_RELAXED(T)                                                   \
    inline T gpuale_ld_relaxed(const T* p) { return gpuale_host_ld_relaxed(p); } \
    inline void gpuale_st_relaxed(T* p, T v) { gpuale_host_st_relaxed(p, v); }
template <typename T>
inline T gpuale_host_ld_relaxed(const T* p) {
#ifdef GPUALE_HOST_FIBERS
    if (GPUALE_HOST_FIBER_ACTIVE()) {
        GPUALE_HOST_SWITCH_POINT();
        const T v = gpuale_fibers::relaxed_load(p);
        GPUALE_HOST_SWITCH_POINT();
        return v;
    }
#endif
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
template <typename T>
inline void gpuale_host_st_relaxed(T* p, T v) {
#ifdef GPUALE_HOST_FIBERS
    if (GPUALE_HOST_FIBER_ACTIVE()) {
        GPUALE_HOST_SWITCH_POINT();
        ++gpuale_fibers::state->stats.relaxed_stores;
        gpuale_fibers::record_store(p, v);
        GPUALE_HOST_SWITCH_POINT();
        return;
    }
#endif
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
GPUALE_HOST_RELAXED(int)
GPUALE_HOST_RELAXED(unsigned int)
GPUALE_HOST_RELAXED(unsigned long long)
#undef GPUALE_HOST_RELAXED

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

// ---------------------------------------------------------------------------------------
// Launches. args[i] points at the value of parameter i (as for cuLaunchKernel). The launch
// shape has been checked against CUDA's limits by gpuale/_hostshim.py. Returns 0, or a
// gpuale_fibers::Status.
template <typename... A, std::size_t... I>
inline void gpuale_host_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}

#ifndef GPUALE_HOST_FIBERS
template <typename... A>
inline int gpuale_host_launch(void (*kernel)(A...), const unsigned int* grid_block,
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
    return 0;
}
#else
namespace gpuale_fibers {

// A block's threads wait here until every thread of the block that has not exited
// arrives; the last to arrive releases them.
inline void barrier() {
    State& s = *state;
    Fiber* self = s.current;
    Slot& slot = s.slots[self->slot];
    ++s.stats.barriers;
    if (++slot.arrived == slot.live) {
        slot.arrived = 0;
        for (auto& f : slot.fibers)
            if (!f->done && f->runnable < 0) make_runnable(f.get());
        switch_point();
        return;
    }
    make_waiting(self);
    suspend();
}

// Entry of every fiber: makecontext passes ints, so the fiber's address comes in halves.
inline void fiber_main(unsigned int lo, unsigned int hi) {
    Fiber* self = reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | (uintptr_t)lo);
    state->run(state->closure);
    self->done = true;
    Slot& slot = state->slots[self->slot];
    --slot.live;
    make_waiting(self);  // never runs again
    if (slot.arrived > 0 && slot.arrived == slot.live) {
        // Threads waiting at a barrier that this one will never reach: CUDA leaves this
        // undefined; release them, as current GPUs do for exited threads.
        slot.arrived = 0;
        for (auto& f : slot.fibers)
            if (!f->done && f->runnable < 0) make_runnable(f.get());
    }
    // Returning resumes uc_link, the scheduler.
}

inline void start_block(State& s, int slot_index, unsigned long long linear) {
    Slot& slot = s.slots[slot_index];
    const unsigned int threads = blockDim.x * blockDim.y * blockDim.z;
    slot.busy = true;
    slot.live = (int)threads;
    slot.arrived = 0;
    const uint3 block{(unsigned int)(linear % gridDim.x),
                      (unsigned int)(linear / gridDim.x % gridDim.y),
                      (unsigned int)(linear / gridDim.x / gridDim.y)};
    while (slot.fibers.size() < threads) {
        slot.fibers.emplace_back(new Fiber);
        slot.stacks.emplace_back(new char[(std::size_t)s.config.stack_bytes]);
    }
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber* f = slot.fibers[t].get();
        f->thread = uint3{t % blockDim.x, t / blockDim.x % blockDim.y,
                          t / blockDim.x / blockDim.y};
        f->block = block;
        f->slot = slot_index;
        f->done = false;
        f->seen.clear();
        getcontext(&f->context);
        f->context.uc_stack.ss_sp = slot.stacks[t].get();
        f->context.uc_stack.ss_size = (std::size_t)s.config.stack_bytes;
        f->context.uc_link = &s.scheduler;
        const uintptr_t address = reinterpret_cast<uintptr_t>(f);
        makecontext(&f->context, reinterpret_cast<void (*)()>(&fiber_main), 2,
                    (unsigned int)(address & 0xFFFFFFFFu), (unsigned int)(address >> 32));
        make_runnable(f);
        ++s.stats.fibers;
    }
}

template <typename... A>
struct Closure {
    void (*kernel)(A...);
    void** args;
    static void run(void* self) {
        auto* c = static_cast<Closure*>(self);
        gpuale_host_call(c->kernel, c->args, std::index_sequence_for<A...>{});
    }
};

}  // namespace gpuale_fibers

#define __syncthreads() gpuale_fibers::barrier()

template <typename... A>
inline int gpuale_host_launch(void (*kernel)(A...), const unsigned int* grid_block,
                              void** args) {
    using namespace gpuale_fibers;
    gridDim = dim3{grid_block[0], grid_block[1], grid_block[2]};
    blockDim = dim3{grid_block[3], grid_block[4], grid_block[5]};
    const unsigned long long n_blocks =
        (unsigned long long)gridDim.x * gridDim.y * gridDim.z;
    Closure<A...> closure{kernel, args};
    State s;
    s.config = config;
    s.run = &Closure<A...>::run;
    s.closure = &closure;
    const int resident = s.config.resident_blocks > 0 &&
                                 (unsigned long long)s.config.resident_blocks < n_blocks
                             ? s.config.resident_blocks
                             : (int)n_blocks;
    s.slots.resize((std::size_t)resident);
    state = &s;
    ++s.stats.launches;
    int status = OK;
    unsigned long long next_block = 0;
    for (int i = 0; i < resident; ++i) start_block(s, i, next_block++);
    while (!s.runnable.empty()) {
        Fiber* f = s.runnable[below(s.runnable.size())];
        s.current = f;
        threadIdx = f->thread;
        blockIdx = f->block;
        swapcontext(&s.scheduler, &f->context);
        Slot& slot = s.slots[f->slot];
        if (slot.live == 0 && slot.busy) {  // its block is finished: the next one moves in
            slot.busy = false;
            if (next_block < n_blocks) start_block(s, f->slot, next_block++);
        }
        if (s.runnable.empty()) {
            for (auto& other : s.slots)
                if (other.live > 0) status = DEADLOCK;
            if (status != OK) break;
            for (int i = 0; i < resident && next_block < n_blocks; ++i)
                if (!s.slots[i].busy) start_block(s, i, next_block++);
        }
    }
    state = nullptr;
    Stats& t = totals;
    t.launches += s.stats.launches;
    t.fibers += s.stats.fibers;
    t.switch_points += s.stats.switch_points;
    t.switches += s.stats.switches;
    t.atomics += s.stats.atomics;
    t.relaxed_loads += s.stats.relaxed_loads;
    t.stale_loads += s.stats.stale_loads;
    t.relaxed_stores += s.stats.relaxed_stores;
    t.barriers += s.stats.barriers;
    return status;
}

extern "C" void gpuale_host_fibers_configure(unsigned long long seed, double switch_probability,
                                             double stale_probability, int history,
                                             int resident_blocks, int stack_bytes) {
    gpuale_fibers::config = gpuale_fibers::Config{seed,          switch_probability,
                                                  stale_probability, history > 0 ? history : 1,
                                                  resident_blocks,  stack_bytes};
    gpuale_fibers::seed(seed);
}

// Counters since the last call, in the order of gpuale_fibers::Stats; then reset.
extern "C" void gpuale_host_fibers_stats(unsigned long long* out) {
    std::memcpy(out, &gpuale_fibers::totals, sizeof gpuale_fibers::totals);
    gpuale_fibers::totals = gpuale_fibers::Stats{};
}
#endif  // GPUALE_HOST_FIBERS

#ifdef GPUALE_HOST_TALLY
// The work counters since the last call (64 slots); then reset.
extern "C" void gpuale_host_tallies_read(unsigned long long* out) {
    std::memcpy(out, gpuale_host_tallies, sizeof gpuale_host_tallies);
    std::memset(gpuale_host_tallies, 0, sizeof gpuale_host_tallies);
}
#endif

// Byte size of every parameter, so the caller can check what it passes.
template <typename... A>
inline int gpuale_host_param_sizes(void (*)(A...), unsigned int* sizes) {
    const unsigned int all[] = {static_cast<unsigned int>(sizeof(A))..., 0u};
    for (std::size_t i = 0; i < sizeof...(A); ++i) sizes[i] = all[i];
    return static_cast<int>(sizeof...(A));
}

// One C entry point pair per kernel; gpuale/_hostshim.py writes one line per kernel.
#define GPUALE_HOST_EXPORT(name)                                                     \
    extern "C" int gpuale_host_launch__##name(const unsigned int* grid_block,        \
                                              void** args) {                         \
        return gpuale_host_launch(&name, grid_block, args);                          \
    }                                                                                \
    extern "C" int gpuale_host_params__##name(unsigned int* sizes) {                 \
        return gpuale_host_param_sizes(&name, sizes);                                \
    }

#endif  // GPUALE_HOST_SHIM_H
