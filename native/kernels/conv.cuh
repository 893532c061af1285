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
