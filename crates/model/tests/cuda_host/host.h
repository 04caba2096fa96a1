// The CUDA C of src/gpu/cuda compiled as C++ for the host, to check the kernels' logic without a
// GPU: each block runs as one OS thread per CUDA thread, blocks one after another. __syncthreads
// is a barrier over the block; warp shuffles, the tensor-core product (mma_m16n8k16) and the
// matrix loads feeding it (ldmatrix) exchange through block-wide buffers between two barriers (every kernel here calls them with all of its
// threads at once). `__shared__` variables
// become statics, which is right while one block runs at a time. Timing, occupancy, shared-memory
// limits and races the barriers hide are out of its reach: the device tests cover those.
#pragma once
#include <algorithm>
#include <array>
#include <atomic>
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

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
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
// A block's threads run at once (blocks one after another), so adds to global memory are atomic.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::max;
using std::min;

// The block being run: its barrier, the shuffle buffer, the tensor-core operands of each thread
// (four registers of A, two of B), the row each thread points ldmatrix at, and the dynamic shared
// memory.
struct EmuBlock {
    std::barrier<>* barrier;
    std::vector<double> exchange;
    std::vector<std::array<uint32_t, 6>> operands;
    std::vector<const __nv_bfloat16*> rows;
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

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for the warp of the calling thread:
// d (16 × 8) += a (16 × 16) · b (16 × 8), with each lane's registers laid out as the PTX ISA's
// "matrix fragments for mma.m16n8k16" give them. Lane 4g + i holds A's rows g and g + 8 at columns
// 2i, 2i + 1 (registers 0, 1) and 2i + 8, 2i + 9 (registers 2, 3); B's column g at rows 2i, 2i + 1
// (register 0) and 2i + 8, 2i + 9 (register 1); D's rows g and g + 8 at columns 2i, 2i + 1. The
// lower half of a register is the lower column (or row). Products are summed in f32 in order.
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const unsigned t = emu_linear_thread(), warp = t & ~31u, lane = t & 31u;
    emu_block.operands[t] = {a[0], a[1], a[2], a[3], b0, b1};
    __syncthreads();
    auto bf16_at = [](uint32_t reg, int high) { return __bfloat162float({uint16_t(high ? reg >> 16 : reg & 0xffffu)}); };
    auto A = [&](int row, int k) {
        const auto& r = emu_block.operands[warp + 4 * (row % 8) + (k % 8) / 2];
        return bf16_at(r[(row >= 8) + 2 * (k >= 8)], k & 1);
    };
    auto B = [&](int k, int col) {
        const auto& r = emu_block.operands[warp + 4 * col + (k % 8) / 2];
        return bf16_at(r[4 + (k >= 8)], k & 1);
    };
    const int g = int(lane >> 2), i = int(lane & 3);
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e >> 1), col = 2 * i + (e & 1);
        float sum = d[e];
        for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
        d[e] = sum;
    }
    __syncthreads();
}

// ldmatrix.sync.aligned.m8n8.{x2,x4}[.trans].shared.b16 for the warp of the calling thread, as
// the PTX ISA describes it: lane l < 8N gives the address of row l % 8 of matrix l / 8 (16 bytes,
// 16-byte aligned); register j of lane 4g + i holds elements 2i and 2i + 1 of row g of matrix j,
// or with TRANS elements g of rows 2i and 2i + 1, the lower element in the lower half.
template <int N, bool TRANS> inline void emu_ldmatrix(uint32_t* r, const __nv_bfloat16* row) {
    const unsigned t = emu_linear_thread(), warp = t & ~31u, lane = t & 31u;
    if (lane < 8 * N && reinterpret_cast<uintptr_t>(row) % 16 != 0) {
        std::fprintf(stderr, "ldmatrix: lane %u's row address is not 16-byte aligned\n", lane);
        std::exit(1);
    }
    emu_block.rows[t] = row;
    __syncthreads();
    const unsigned g = lane >> 2, i = lane & 3;
    for (unsigned j = 0; j < N; ++j) {
        const __nv_bfloat16* const* m = &emu_block.rows[warp + 8 * j];
        const uint16_t lo = TRANS ? m[2 * i][g].bits : m[g][2 * i].bits;
        const uint16_t hi = TRANS ? m[2 * i + 1][g].bits : m[g][2 * i + 1].bits;
        r[j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    __syncthreads();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* row) { emu_ldmatrix<4, false>(r, row); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const __nv_bfloat16* row) { emu_ldmatrix<2, true>(r, row); }

// cp.async as the PTX ISA describes it, its lateness included: a thread's copies wait in groups
// (closed by cp_async_commit) and land only when cp_async_wait<N> lets all but its newest N groups
// through, so a kernel that reads a buffer before waiting sees the old contents (NaN at first)
// and fails its check.
struct EmuCopy {
    void* dst;
    const void* src;
    bool valid;
};
inline thread_local std::vector<EmuCopy> emu_open;
inline thread_local std::vector<std::vector<EmuCopy>> emu_groups;
inline void cp_async16(void* dst, const void* src, bool valid) { emu_open.push_back({dst, src, valid}); }
inline void cp_async_commit() {
    emu_groups.push_back(std::move(emu_open));
    emu_open.clear();
}
template <int N> inline void cp_async_wait() {
    while (emu_groups.size() > size_t(N)) {
        for (const EmuCopy& c : emu_groups.front()) {
            if (c.valid)
                std::memcpy(c.dst, c.src, 16);
            else
                std::memset(c.dst, 0, 16);
        }
        emu_groups.erase(emu_groups.begin());
    }
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
                emu_block.operands.assign(n, {});
                emu_block.rows.assign(n, nullptr);
                // A canary past the end shows a kernel using more shared memory than it was given.
                emu_block.dynamic.assign(shared_bytes / 4 + 256, NAN);
                for (size_t i = shared_bytes / 4; i < emu_block.dynamic.size(); ++i) emu_block.dynamic[i] = 12345.f;
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; ++t)
                    threads.emplace_back([&, t] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        kernel();
                        if (!emu_open.empty() || !emu_groups.empty()) {
                            std::fprintf(stderr, "a kernel left cp.async copies it never waited for\n");
                            std::exit(1);
                        }
                    });
                for (auto& th : threads) th.join();
                for (size_t i = shared_bytes / 4; i < emu_block.dynamic.size(); ++i)
                    if (emu_block.dynamic[i] != 12345.f) {
                        std::fprintf(stderr, "a kernel wrote past its %zu bytes of shared memory\n", shared_bytes);
                        std::exit(1);
                    }
            }
}
