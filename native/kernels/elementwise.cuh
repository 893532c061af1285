// Elementwise ops: fill, casts/copies, axpy, scale, activations and their backward, dropout, bias.
// Each kernel is a grid-stride loop over n elements; launchers live in CudaDevice.java.
#pragma once
#include "common.cuh"
#include "vec.cuh"

#define SQRT_2_OVER_PI 0.7978845608028654f

extern "C" __global__ void st_fill(void* x, int tx, int64_t n, float v) {
  GRID_STRIDE(i, n) { st(x, tx, i, v); }
}

extern "C" __global__ void st_fill_i32(int* x, int64_t n, int v) {
  GRID_STRIDE(i, n) { x[i] = v; }
}

// dst = src with conversion (fp32 <-> bf16, round to nearest even).
extern "C" __global__ void st_copy(const void* src, int ts, void* dst, int td, int64_t n) {
  GRID_STRIDE(i, n) { st(dst, td, i, ld(src, ts, i)); }
}

// y += alpha * x
extern "C" __global__ void st_axpy(float alpha, const void* x, int tx, void* y, int ty, int64_t n) {
  GRID_STRIDE(i, n) { st(y, ty, i, ld(y, ty, i) + alpha * ld(x, tx, i)); }
}

// x *= alpha
extern "C" __global__ void st_scale(void* x, int tx, int64_t n, float alpha) {
  GRID_STRIDE(i, n) { st(x, tx, i, ld(x, tx, i) * alpha); }
}

// x *= alpha; *nonFinite = 1 if any scaled value is Inf or NaN (gradient unscaling for mixed precision).
extern "C" __global__ void st_scale_check(void* x, int tx, int64_t n, float alpha, int* nonFinite) {
  int bad = 0;
  GRID_STRIDE(i, n) {
    float v = ld(x, tx, i) * alpha;
    st(x, tx, i, v);
    bad |= !isfinite(v);
  }
  if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) {
    atomicExch(nonFinite, 1);
  }
}

extern "C" __global__ void st_relu(const void* x, int tx, void* y, int ty, int64_t n) {
  GRID_STRIDE(i, n) {
    float v = ld(x, tx, i);
    st(y, ty, i, v > 0 ? v : 0.0f);
  }
}

extern "C" __global__ void st_relu_bwd(const void* x, int tx, const void* dy, int tdy, void* dx, int tdx,
                                       int64_t n, int vec) {
  if (vec) {
    binary_vec(x, tx, dy, tdy, dx, tdx, n, [](float u, float g) { return u > 0 ? g : 0.0f; });
    return;
  }
  GRID_STRIDE(i, n) { st(dx, tdx, i, ld(x, tx, i) > 0 ? ld(dy, tdy, i) : 0.0f); }
}

// GELU, tanh approximation. tanh in double, as the CPU engine computes (float) Math.tanh(u).
extern "C" __global__ void st_gelu(const void* x, int tx, void* y, int ty, int64_t n) {
  GRID_STRIDE(i, n) {
    float v = ld(x, tx, i);
    float u = SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
    st(y, ty, i, 0.5f * v * (1.0f + (float)tanh((double)u)));
  }
}

// GELU's derivative at v (tanh approximation), as CpuDevice.geluBackward computes it.
__device__ __forceinline__ float gelu_grad(float v) {
  float u = SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
  float th = (float)tanh((double)u);
  float sech2 = 1.0f - th * th;
  return 0.5f * (1.0f + th) + 0.5f * v * sech2 * SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * v * v);
}

extern "C" __global__ void st_gelu_bwd(const void* x, int tx, const void* dy, int tdy, void* dx, int tdx,
                                       int64_t n) {
  GRID_STRIDE(i, n) { st(dx, tdx, i, ld(dy, tdy, i) * gelu_grad(ld(x, tx, i))); }
}

// Inverted dropout: y = keep ? x * scale : 0, keep = Rng.uniform(seed, offset + i) >= p.
// scale = 1 / (1 - p) is computed on the host in float, as the CPU engine does.
extern "C" __global__ void st_dropout(const void* x, int tx, void* y, int ty, int64_t n, float p, float scale,
                                      uint64_t seed, uint64_t offset) {
  GRID_STRIDE(i, n) {
    bool keep = rng_uniform(seed, offset + (uint64_t)i) >= p;
    st(y, ty, i, keep ? ld(x, tx, i) * scale : 0.0f);
  }
}

// y(rows, cols) += bias(cols)
extern "C" __global__ void st_add_bias(void* y, int ty, const void* bias, int tb, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) { st(y, ty, i, ld(y, ty, i) + ld(bias, tb, i % cols)); }
}

// dbias(cols) += sum over rows of dy(rows, cols). One thread per column, rows summed in order in float,
// exactly as the CPU engine (see Note [parity with the CPU engine]); coalesced across the warp.
extern "C" __global__ void st_bias_grad(const void* dy, int tdy, void* dbias, int tdb, int64_t rows,
                                        int64_t cols) {
  GRID_STRIDE(j, cols) {
    float s = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
      s += ld(dy, tdy, r * cols + j);
    }
    st(dbias, tdb, j, ld(dbias, tdb, j) + s);
  }
}
