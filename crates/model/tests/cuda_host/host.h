// The CUDA C of src/gpu/cuda compiled as C++ for the host, to check the kernels' logic without a
// GPU: each block runs as one OS thread per CUDA thread, blocks one after another. __syncthreads
// is a barrier over the block; warp shuffles exchange through a block-wide buffer between two
// barriers (every kernel here shuffles with all of its threads at once). `__shared__` variables
// become statics, which is right while one block runs at a time. Timing, occupancy, shared-memory
// limits and races the barriers hide are out of its reach: the device tests cover those.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

struct alignas(16) float4 {
    float x, y, z, w;
};

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1);                                            // round to nearest even
    return {uint16_t(u >> 16)};
}

inline float __expf(float x) { return std::exp(x); }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::max;
using std::min;

// The block being run: its barrier, the shuffle buffer and the dynamic shared memory.
struct EmuBlock {
    std::barrier<>* barrier;
    std::vector<double> exchange;
    std::vector<float> dynamic;
};
extern EmuBlock emu_block;
#define DYNAMIC_SHARED(name) float* name = emu_block.dynamic.data()

inline void __syncthreads() { emu_block.barrier->arrive_and_wait(); }

// Synchronises the whole block, which is at least the warp (every kernel here calls it with all
// of its threads).
inline void __syncwarp() { emu_block.barrier->arrive_and_wait(); }

inline unsigned emu_linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename V> V __shfl_sync(unsigned, V v, int src) {
    const unsigned t = emu_linear_thread();
    emu_block.exchange[t] = v;
    __syncthreads();
    const V r = V(emu_block.exchange[(t & ~31u) + (unsigned(src) & 31u)]);
    __syncthreads();
    return r;
}
template <typename V> V __shfl_xor_sync(unsigned mask, V v, int lane_mask) {
    return __shfl_sync(mask, v, int((emu_linear_thread() & 31u) ^ unsigned(lane_mask)));
}

// Runs `kernel` over the grid, one block at a time; dynamic shared memory starts as NaN so a read
// of an element no thread wrote shows.
inline void emu_launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> barrier(n);
                emu_block.barrier = &barrier;
                emu_block.exchange.assign(n, NAN);
                // A canary past the end shows a kernel using more shared memory than it was given.
                emu_block.dynamic.assign(shared_bytes / 4 + 256, NAN);
                for (size_t i = shared_bytes / 4; i < emu_block.dynamic.size(); ++i) emu_block.dynamic[i] = 12345.f;
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; ++t)
                    threads.emplace_back([&, t] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        kernel();
                    });
                for (auto& th : threads) th.join();
                for (size_t i = shared_bytes / 4; i < emu_block.dynamic.size(); ++i)
                    if (emu_block.dynamic[i] != 12345.f) {
                        std::fprintf(stderr, "a kernel wrote past its %zu bytes of shared memory\n", shared_bytes);
                        std::exit(1);
                    }
            }
}
