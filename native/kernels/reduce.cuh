// Reductions: sum and sum of squares over a whole tensor, in double, in two passes.
// Pass 1 (st_sum_partial): each block writes one double partial. Pass 2 (st_sum_final): one block sums the
// partials into out[0] and, when accum is not null, adds (float) total to accum[0] (Device.sumInto).
#pragma once
#include "common.cuh"

#define REDUCE_THREADS 256

__device__ __forceinline__ double block_sum(double v) {
  __shared__ double warps[32];
  v = warp_sum(v);
  int lane = threadIdx.x & 31;
  int w = threadIdx.x >> 5;
  if (lane == 0) {
    warps[w] = v;
  }
  __syncthreads();
  int nw = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nw) ? warps[threadIdx.x] : 0.0;
  if (w == 0) {
    v = warp_sum(v);
  }
  __syncthreads();
  return v;  // valid in thread 0
}

extern "C" __global__ void st_sum_partial(const void* x, int tx, int64_t n, int squares, double* partials) {
  double s = 0.0;
  GRID_STRIDE(i, n) {
    double v = ldd(x, tx, i);
    s += squares ? v * v : v;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = s;
  }
}

extern "C" __global__ void st_sum_final(const double* partials, int count, double* out, float* accum) {
  double s = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    s += partials[i];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    out[0] = s;
    if (accum != nullptr) {
      accum[0] = accum[0] + (float)s;
    }
  }
}
