// Kernels of the fused linear path (mixed precision): the bias + activation epilogue when cuBLASLt's own
// epilogue cannot be used, and the backward of activation + bias in one pass with a deterministic
// column sum. Launchers: CudaDevice.linearForward / linearActBackward.
#pragma once
#include "common.cuh"

// y(rows, cols) = act(y + bias(cols)), act = relu when relu != 0, else identity. bias may be null.
extern "C" __global__ void st_bias_act(void* y, int ty, const void* bias, int tb, int64_t rows, int64_t cols,
                                       int relu) {
  GRID_STRIDE(i, rows * cols) {
    float v = ld(y, ty, i);
    if (bias != nullptr) {
      v = v + ld(bias, tb, i % cols);
    }
    st(y, ty, i, relu && !(v > 0) ? 0.0f : v);
  }
}

// Note [deterministic column sums]: the bias gradient is a sum over the batch (rows). Pass 1 gives every
// block a tile of 32 columns x COLSUM_ROWS rows; its 8 row lanes sum their rows in order, then lane 0 adds
// the 8 lane sums in order and writes one partial per (row chunk, column). Pass 2 adds the chunks' partials
// of a column in chunk order. No atomics: the same inputs give the same bits on every run and every rank.
#define COLSUM_ROWS 128

// The activation's backward at one element, h != null: ACT 1 (ReLU): h is its output, h > 0 ? g : 0; ACT 2 (GELU,
// Note [fused GELU] in nn.Linear): h is its input, g * GELU'(h), as st_gelu_bwd. A template argument, so the ReLU
// kernel is the code it was.
template <int ACT>
__device__ __forceinline__ float act_bwd(float g, float hv) {
  if (ACT == 2) {
    return g * gelu_grad(hv);
  }
  return hv > 0 ? g : 0.0f;
}

// dz = h == null ? dh : act_bwd<ACT>(dh, h), elementwise over (rows, cols), in place allowed (dz == dh);
// when partials != null, partials[chunk * cols + c] = sum of dz (before rounding to dz's type) over the
// rows of the chunk. Block (32, 8); grid (ceil(cols / 32), ceil(rows / COLSUM_ROWS)).
template <int ACT>
__device__ __forceinline__ void act_bwd_colsum(const void* dh, int tdh, const void* h, int th, void* dz, int tdz,
                                               int64_t rows, int64_t cols, float* partials) {
  __shared__ float lanes[8][33];
  int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
  int64_t r0 = (int64_t)blockIdx.y * COLSUM_ROWS;
  int64_t r1 = r0 + COLSUM_ROWS < rows ? r0 + COLSUM_ROWS : rows;
  float s = 0.0f;
  if (c < cols && r1 - r0 == COLSUM_ROWS) {
    // Note [column sum loads]: a full chunk. The thread's COLSUM_ROWS / 8 rows are all loaded before any is used,
    // so their loads are in flight together; one row at a time, each thread waited out a DRAM round trip per row
    // and the kernel ran at ~1.2 TB/s (the benchmark MLP's 4096 x 8192 bf16 dz: 162 us, CUPTI trace). The sum
    // takes the rows in the same order as the loop below, so the bits are the same.
    constexpr int kRows = COLSUM_ROWS / 8;
    float g[kRows];
    float hv[kRows];
#pragma unroll
    for (int j = 0; j < kRows; j++) {
      g[j] = ld(dh, tdh, (r0 + threadIdx.y + 8 * j) * cols + c);
    }
    if (h != nullptr) {
#pragma unroll
      for (int j = 0; j < kRows; j++) {
        hv[j] = ld(h, th, (r0 + threadIdx.y + 8 * j) * cols + c);
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; j++) {
      float v = h != nullptr ? act_bwd<ACT>(g[j], hv[j]) : g[j];
      st(dz, tdz, (r0 + threadIdx.y + 8 * j) * cols + c, v);
      s += v;
    }
  } else if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      int64_t i = r * cols + c;
      float g = ld(dh, tdh, i);
      if (h != nullptr) {
        g = act_bwd<ACT>(g, ld(h, th, i));
      }
      st(dz, tdz, i, g);
      s += g;
    }
  }
  if (partials == nullptr) {
    return;
  }
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float t = 0.0f;
    for (int k = 0; k < 8; k++) {
      t += lanes[k][threadIdx.x];
    }
    partials[blockIdx.y * cols + c] = t;
  }
}

// act_bwd_colsum for a ReLU (h: its output) or no activation (h null).
extern "C" __global__ void st_act_bwd_colsum(const void* dh, int tdh, const void* h, int th, void* dz, int tdz,
                                             int64_t rows, int64_t cols, float* partials) {
  act_bwd_colsum<1>(dh, tdh, h, th, dz, tdz, rows, cols, partials);
}

// act_bwd_colsum for a GELU (h: its input, not null).
extern "C" __global__ void st_gelu_bwd_colsum(const void* dh, int tdh, const void* h, int th, void* dz, int tdz,
                                              int64_t rows, int64_t cols, float* partials) {
  act_bwd_colsum<2>(dh, tdh, h, th, dz, tdz, rows, cols, partials);
}

// dbias(cols) = (accumulate ? dbias : 0) + sum over chunks of partials(chunks, cols), chunks in order.
extern "C" __global__ void st_colsum_final(const float* partials, int64_t chunks, int64_t cols, void* dbias,
                                           int tdb, int accumulate) {
  GRID_STRIDE(c, cols) {
    float s = 0.0f;
    for (int64_t k = 0; k < chunks; k++) {
      s += partials[k * cols + c];
    }
    st(dbias, tdb, c, accumulate ? ld(dbias, tdb, c) + s : s);
  }
}
