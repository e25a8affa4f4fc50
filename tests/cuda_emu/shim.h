// Host emulation of the CUDA built-ins our kernels use, so kernels/*.cu compile with g++
// and run on the CPU in CI (tests/test_kernel_emulation.py).
//
// One host thread per CUDA thread of a block; the blocks of a grid run one after another,
// so a `static` local is exactly the block's shared memory; __syncthreads is a barrier
// over the block's threads. No substitute for a GPU run: it checks indexing, bounds,
// barriers and argument types, not timing, memory ordering or warp behaviour.
#pragma once
#include <algorithm>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

struct uint3 { unsigned int x = 0, y = 0, z = 0; };
struct dim3 { unsigned int x = 1, y = 1, z = 1; };
struct ulonglong2 { unsigned long long x, y; };

namespace emu {
inline thread_local uint3 thread_idx, block_idx;
inline thread_local dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;

// Run `kernel` over a grid of (gx, gy) blocks of bx threads each.
inline void launch(unsigned gx, unsigned gy, unsigned bx, const std::function<void()>& kernel) {
    for (unsigned by = 0; by < gy; ++by) {
        for (unsigned b = 0; b < gx; ++b) {
            std::barrier<> bar(bx);
            std::vector<std::thread> threads;
            threads.reserve(bx);
            for (unsigned t = 0; t < bx; ++t) {
                threads.emplace_back([&, t] {
                    thread_idx = {t, 0, 0};
                    block_idx = {b, by, 0};
                    block_dim = {bx, 1, 1};
                    grid_dim = {gx, gy, 1};
                    block_barrier = &bar;
                    kernel();
                });
            }
            for (auto& th : threads) th.join();
        }
    }
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
template <class T> inline T atomicAdd(T* address, T value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
using std::max;
using std::min;
