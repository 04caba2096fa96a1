// Shared by the kernels: conversions between the storage types and f32 (all arithmetic is f32),
// and block-wide reductions. Blocks are a multiple of 32 threads.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum of `v` over the block, returned to every thread. `scratch` holds 32 floats; the first
// barrier lets a block call this twice in a row with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_sum(lane < warps ? scratch[lane] : 0.f);
}

// The maximum of `v` over the block, returned to every thread (as `block_sum`).
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    return warp_max(lane < warps ? scratch[lane] : -INFINITY);
}

// Sixteen bytes of T (8 bf16 or 4 f32) loaded and stored at once; `e()` are its elements.
template <typename T> struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
    uint4 raw;
    __device__ __forceinline__ T* e() { return reinterpret_cast<T*>(&raw); }
    __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
    __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
};

// Whether every pointer is 16-byte aligned (null ones count as aligned).
template <typename... P> __device__ __forceinline__ bool aligned16(const P*... p) {
    return (((uintptr_t)p | ...) & 15) == 0;
}

// The block's dynamic shared memory as f32 (a host emulation of the kernels defines it otherwise).
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(name) extern __shared__ __align__(128) float name[]
#endif

// One extern "C" entry point per storage type for a kernel template: NAME_f32 and NAME_bf16.
#define FOR_EACH_TYPE(MACRO) MACRO(float, f32) MACRO(__nv_bfloat16, bf16)
