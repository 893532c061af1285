// Vectorised access: 8 consecutive values per load or store (16 bytes of bf16, two 16-byte loads of fp32), so a
// thread keeps more bytes in flight than with one 2-byte load at a time (a bandwidth-bound pass over bf16
// activations reached ~0.7 TB/s of an H100's ~3 TB/s with scalar loads). The launcher passes vec = 1 only when
// every pointer is 16-byte aligned and the vectorised dimension is a multiple of 8 (CudaDevice.vec8).
#pragma once
#include "common.cuh"

#define VEC 8

// out[0..7] = p[i .. i + 7] as float; i a multiple of 8, p 16-byte aligned.
__device__ __forceinline__ void ldv(const void* p, int t, int64_t i, float* out) {
  if (t == DT_BF16) {
    uint4 u = *(const uint4*)((const uint16_t*)p + i);
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      out[2 * k] = __uint_as_float(w[k] << 16);
      out[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  } else {
    float4 a = *(const float4*)((const float*)p + i);
    float4 b = *(const float4*)((const float*)p + i + 4);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  }
}

// p[i .. i + 7] = v[0..7], rounded once to p's dtype (as st); i a multiple of 8, p 16-byte aligned.
__device__ __forceinline__ void stv(void* p, int t, int64_t i, const float* v) {
  if (t == DT_BF16) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
      w[k] = (uint32_t)f32_to_bf16(v[2 * k]) | ((uint32_t)f32_to_bf16(v[2 * k + 1]) << 16);
    }
    *(uint4*)((uint16_t*)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
    *(float4*)((float*)p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *(float4*)((float*)p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// y[i] = f(a[i], b[i]) for i < n, 8 values per access: n a multiple of 8, 16-byte aligned pointers (the launcher's
// vec check). Grid-stride over the 8-value groups.
template <typename F>
__device__ __forceinline__ void binary_vec(const void* a, int ta, const void* b, int tb, void* y, int ty, int64_t n,
                                           F f) {
  GRID_STRIDE(j, n / VEC) {
    float u[VEC], w[VEC];
    ldv(a, ta, j * VEC, u);
    ldv(b, tb, j * VEC, w);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      u[k] = f(u[k], w[k]);
    }
    stv(y, ty, j * VEC, u);
  }
}
