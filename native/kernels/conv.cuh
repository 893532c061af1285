// Kernels of the convolutional layers that cuDNN does not cover the way the layers need: the per-channel
// bias of a convolution (forward) and its gradient (a deterministic per-channel sum, accumulated in fp32).
// Launchers: CudaDevice.conv2dForward / conv2dBackwardFilter. Layout 0 = NCHW, 1 = NHWC.
#pragma once
#include "common.cuh"
#include "reduce.cuh"

__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t c, int64_t hw, int layout) {
  return layout == 1 ? i % c : (i / hw) % c;
}

// y(n, c, hw) += bias(c), y fp32 or bf16 (rounded once), bias fp32.
extern "C" __global__ void st_channel_bias(void* y, int ty, const float* bias, int64_t n, int64_t c, int64_t hw,
                                           int layout) {
  GRID_STRIDE(i, n * c * hw) { st(y, ty, i, ld(y, ty, i) + bias[channel_of(i, c, hw, layout)]); }
}

// dbias(c) += sum of dy over (n, hw) for channel blockIdx.x (grid-stride over channels); one block per channel
// at a time, threads take a fixed share of the values and block_sum adds them in a fixed order: the same bits
// on every run (no atomics).
extern "C" __global__ void st_channel_bias_grad(const void* dy, int tdy, float* dbias, int64_t n, int64_t c,
                                                int64_t hw, int layout) {
  for (int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double s = 0.0;
    for (int64_t m = threadIdx.x; m < n * hw; m += blockDim.x) {
      int64_t i = layout == 1 ? m * c + ch : ((m / hw) * c + ch) * hw + (m % hw);
      s += (double)ld(dy, tdy, i);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
      dbias[ch] = dbias[ch] + (float)s;
    }
    __syncthreads();
  }
}

// Layout conversion of a logical (n, c, hw) tensor between channels-first (NCHW: [n][c][hw]) and
// channels-last (NHWC: [n][hw][c]); to_cl = 1: src NCHW -> dst NHWC, 0: src NHWC -> dst NCHW, -1: both in one
// layout (a copy). dst = src, or
// dst += src when accumulate; dtypes may differ (fp32 <-> bf16). Also converts conv filters (k, c, kh*kw).
// Indexed by the destination, so writes are coalesced.
extern "C" __global__ void st_layout_convert(const void* src, int ts, void* dst, int td, int64_t n, int64_t c,
                                             int64_t hw, int to_cl, int accumulate) {
  GRID_STRIDE(i, n * c * hw) {
    int64_t j;
    if (to_cl < 0) {  // same layout: a plain (converting) copy
      j = i;
    } else if (to_cl) {  // i indexes NHWC dst: i = (b * hw + p) * c + ch
      int64_t ch = i % c;
      int64_t p = (i / c) % hw;
      int64_t b = i / (c * hw);
      j = (b * c + ch) * hw + p;
    } else {  // i indexes NCHW dst: i = (b * c + ch) * hw + p
      int64_t p = i % hw;
      int64_t ch = (i / hw) % c;
      int64_t b = i / (c * hw);
      j = (b * hw + p) * c + ch;
    }
    float v = ld(src, ts, j);
    st(dst, td, i, accumulate ? ld(dst, td, i) + v : v);
  }
}

// y = a + b elementwise (the residual add of ResNet blocks, forward and backward), any float dtypes; one pass
// instead of a copy and an axpy.
extern "C" __global__ void st_add2(const void* a, int ta, const void* b, int tb, void* y, int ty, int64_t n) {
  GRID_STRIDE(i, n) { st(y, ty, i, ld(a, ta, i) + ld(b, tb, i)); }
}
