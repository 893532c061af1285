// Shared helpers of the project's kernels: element types, bf16 rounding, grid-stride loops, warp sums.
//
// Note [dtype codes]: float tensors arrive as (pointer, dtype code) pairs; the codes are the ordinals of
// dev.sparktrainer.engine.DType (FLOAT32 = 0, INT32 = 1, BFLOAT16 = 2). One kernel then serves fp32 and
// bf16 storage; the branch is uniform across the grid, so it costs almost nothing next to memory traffic.
//
// Note [parity with the CPU engine]: the kernels mirror CpuDevice's arithmetic operation by operation and
// the fatbin is compiled with --fmad=false, so elementwise ops, optimizers and per-column bias sums give
// the same bits as the CPU engine; reductions across threads (sum, softmax's denominator) accumulate in
// double so their results differ from the CPU only in the last bits.
#pragma once
#include <stdint.h>

#define DT_F32 0
#define DT_I32 1
#define DT_BF16 2

#define GRID_STRIDE(i, n)                                                            \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);        \
       i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }

// Round to nearest even, exactly as CpuDevice.roundBf16 (NaN stays a quiet NaN).
__device__ __forceinline__ uint16_t f32_to_bf16(float v) {
  uint32_t b = __float_as_uint(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    return (uint16_t)((b >> 16) | 0x0040u);
  }
  b += 0x7fffu + ((b >> 16) & 1u);
  return (uint16_t)(b >> 16);
}

__device__ __forceinline__ float ld(const void* p, int t, int64_t i) {
  if (t == DT_BF16) {
    return bf16_to_f32(((const uint16_t*)p)[i]);
  }
  return ((const float*)p)[i];
}

__device__ __forceinline__ double ldd(const void* p, int t, int64_t i) {
  if (t == DT_I32) {
    return (double)((const int*)p)[i];
  }
  return (double)ld(p, t, i);
}

__device__ __forceinline__ void st(void* p, int t, int64_t i, float v) {
  if (t == DT_BF16) {
    ((uint16_t*)p)[i] = f32_to_bf16(v);
  } else {
    ((float*)p)[i] = v;
  }
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, o);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

// Counter-based random numbers: must stay bit-identical to dev.sparktrainer.engine.Rng.
__device__ __forceinline__ uint64_t rng_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float rng_uniform(uint64_t seed, uint64_t index) {
  uint64_t h = rng_mix(rng_mix(seed) + index * 0x9e3779b97f4a7c15ull);
  return (float)(h >> 40) * 0x1.0p-24f;
}
