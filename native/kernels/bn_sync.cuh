// Synchronised batch norm (SyncBatchNorm): the training forward and backward of batch normalisation split at
// the two points where the layer all-reduces per-channel sums across ranks (Note [synchronised batch norm] in
// dev.sparktrainer.nn.BatchNorm2d). Launchers: CudaDevice.batchNormStats / batchNormFinalizeStats /
// batchNormApply / batchNormBackwardReduce / batchNormBackwardApply; the CPU reference is CpuConv's
// functions of the same names, and these kernels mirror its arithmetic operation by operation.
//
// x, y, dy, dx: logical (n, c, hw), fp32 or bf16 (dtype codes, Note [dtype codes]), stored channels-first
// (layout 0, NCHW: [n][c][hw]) or channels-last (layout 1, NHWC: [n][hw][c]; Note [channels-last tensors] in
// CudaDevice); per-channel tensors fp32.
//
// Reductions (sums over the n * hw values of each channel, in double, rounded to float once) are
// deterministic, without atomics: every thread sums a fixed share of the values, and the shares are added in
// a fixed order, so a shape gives the same bits on every run.
//   NCHW: one block per channel (grid-stride over channels); block_sum adds the threads' shares.
//   NHWC: a channel's values are c apart, so one block per channel would read a 32-byte sector per value.
//         Instead st_bn_partials_nhwc gives each block 32 adjacent channels (a warp reads 32 consecutive
//         values of one row) over one chunk of rows; the warps' shares are added in warp order and written as
//         one double partial per (chunk, channel), and st_bn_partials_final adds the chunks in order.
#pragma once
#include "common.cuh"
#include "reduce.cuh"

__device__ __forceinline__ int64_t bn_channel(int64_t i, int64_t c, int64_t hw, int layout) {
  return layout == 1 ? i % c : (i / hw) % c;
}

// Calls f(i) for every element index i of channel ch of an NCHW tensor, each thread of the block taking a
// fixed share: with hw >= blockDim.x the threads stride each sample's contiguous run of hw values; with
// smaller planes (7x7, 1x1, (N, C) input) they stride the channel's n * hw values as one range.
template <typename F>
__device__ __forceinline__ void bn_for_channel(int64_t ch, int64_t n, int64_t c, int64_t hw, F f) {
  if (hw >= (int64_t)blockDim.x) {
    for (int64_t b = 0; b < n; b++) {
      int64_t base = (b * c + ch) * hw;
      for (int64_t j = threadIdx.x; j < hw; j += blockDim.x) {
        f(base + j);
      }
    }
  } else {
    for (int64_t m = threadIdx.x; m < n * hw; m += blockDim.x) {
      int64_t b = m / hw;
      f((b * c + ch) * hw + (m - b * hw));
    }
  }
}

// The two sums of one value i: mode 0 (statistics) [x, x^2]; mode 1 (backward) [dy, dy * xhat] with
// xhat = (x - mu) * inv in float, as CpuConv.batchNormBackwardReduce.
__device__ __forceinline__ void bn_terms(int mode, const void* x, int tx, const void* dy, int tdy, float mu,
                                         float inv, int64_t i, double& s, double& q) {
  if (mode == 0) {
    double v = (double)ld(x, tx, i);
    s += v;
    q += v * v;
  } else {
    float g = ld(dy, tdy, i);
    float xh = (ld(x, tx, i) - mu) * inv;
    s += (double)g;
    q += (double)(g * xh);
  }
}

// NCHW: out(2c) = per channel [sum, sum] of bn_terms (mode 0: x; mode 1: dy, with mean and inv_std).
extern "C" __global__ void st_bn_reduce_nchw(int mode, const void* x, int tx, const void* dy, int tdy,
                                             const float* mean, const float* inv_std, float* out, int64_t n,
                                             int64_t c, int64_t hw) {
  for (int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
    float mu = mode == 1 ? mean[ch] : 0.f;
    float inv = mode == 1 ? inv_std[ch] : 0.f;
    double s = 0.0;
    double q = 0.0;
    bn_for_channel(ch, n, c, hw, [&](int64_t i) { bn_terms(mode, x, tx, dy, tdy, mu, inv, i, s, q); });
    s = block_sum(s);
    q = block_sum(q);
    if (threadIdx.x == 0) {
      out[ch] = (float)s;
      out[c + ch] = (float)q;
    }
    __syncthreads();
  }
}

#define BN_TILE 32  // channels per block (blockDim.x) of the NHWC reduction
#define BN_ROWS 16  // rows in flight per block (blockDim.y)

// NHWC, pass 1: block (blockIdx.x, blockIdx.y) takes channels [32 bx, 32 bx + 32) over the rows (the n * hw
// positions) [by * rows_per_chunk, ...); partials[(by * c + ch) * 2 + k] = the chunk's sum k in double.
extern "C" __global__ void st_bn_partials_nhwc(int mode, const void* x, int tx, const void* dy, int tdy,
                                               const float* mean, const float* inv_std, double* partials,
                                               int64_t rows, int64_t c, int64_t rows_per_chunk) {
  __shared__ double sh[2][BN_ROWS][BN_TILE];
  int64_t ch = (int64_t)blockIdx.x * BN_TILE + threadIdx.x;
  int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  int64_t r1 = min(rows, r0 + rows_per_chunk);
  double s = 0.0;
  double q = 0.0;
  if (ch < c) {
    float mu = mode == 1 ? mean[ch] : 0.f;
    float inv = mode == 1 ? inv_std[ch] : 0.f;
    for (int64_t r = r0 + threadIdx.y; r < r1; r += BN_ROWS) {
      bn_terms(mode, x, tx, dy, tdy, mu, inv, r * c + ch, s, q);
    }
  }
  sh[0][threadIdx.y][threadIdx.x] = s;
  sh[1][threadIdx.y][threadIdx.x] = q;
  __syncthreads();
  if (threadIdx.y == 0 && ch < c) {
    for (int k = 1; k < BN_ROWS; k++) {  // fixed order
      s += sh[0][k][threadIdx.x];
      q += sh[1][k][threadIdx.x];
    }
    partials[((int64_t)blockIdx.y * c + ch) * 2] = s;
    partials[((int64_t)blockIdx.y * c + ch) * 2 + 1] = q;
  }
}

// NHWC, pass 2: out(2c) = per channel the chunks' partials added in chunk order, rounded to float once.
extern "C" __global__ void st_bn_partials_final(const double* partials, int64_t chunks, int64_t c, float* out) {
  GRID_STRIDE(ch, c) {
    double s = 0.0;
    double q = 0.0;
    for (int64_t k = 0; k < chunks; k++) {
      s += partials[(k * c + ch) * 2];
      q += partials[(k * c + ch) * 2 + 1];
    }
    out[ch] = (float)s;
    out[c + ch] = (float)q;
  }
}

// One thread per channel: mean, invStd and (when running_mean is not null) the running statistics from
// stats(2c) over count values, in double as CpuConv.batchNormFinalizeStats.
extern "C" __global__ void st_bn_finalize(const float* stats, int64_t c, int64_t count, float momentum, float eps,
                                          float* mean, float* inv_std, float* running_mean, float* running_var) {
  GRID_STRIDE(ch, c) {
    double cnt = (double)count;
    double mu = (double)stats[ch] / cnt;
    double var = (double)stats[c + ch] / cnt - mu * mu;
    if (var < 0.0) {
      var = 0.0;  // one-pass variance: rounding can leave a tiny negative value
    }
    mean[ch] = (float)mu;
    inv_std[ch] = (float)(1.0 / sqrt(var + (double)eps));
    if (running_mean != nullptr) {
      double mo = (double)momentum;
      running_mean[ch] = (float)((1.0 - mo) * (double)running_mean[ch] + mo * mu);
      running_var[ch] = (float)((1.0 - mo) * (double)running_var[ch] + mo * var * cnt / (double)(count - 1));
    }
  }
}

// y = (x - mean) * inv_std * gamma + beta per channel, in float (rounded once to y's dtype); y in x's layout.
extern "C" __global__ void st_bn_apply(const void* x, int tx, void* y, int ty, const float* gamma, const float* beta,
                                       const float* mean, const float* inv_std, int64_t n, int64_t c, int64_t hw,
                                       int layout) {
  GRID_STRIDE(i, n * c * hw) {
    int64_t ch = bn_channel(i, c, hw, layout);
    st(y, ty, i, (ld(x, tx, i) - mean[ch]) * inv_std[ch] * gamma[ch] + beta[ch]);
  }
}

// dx = k * (mf * dy - sum_dy - xhat * sum_dy_xhat), k = gamma * inv_std / mf, mf = (float) M; in float.
extern "C" __global__ void st_bn_bwd_apply(const void* x, int tx, const void* dy, int tdy, const float* gamma,
                                           const float* mean, const float* inv_std, const float* sums, float mf,
                                           void* dx, int tdx, int64_t n, int64_t c, int64_t hw, int layout) {
  GRID_STRIDE(i, n * c * hw) {
    int64_t ch = bn_channel(i, c, hw, layout);
    float inv = inv_std[ch];
    float k = gamma[ch] * inv / mf;
    float xh = (ld(x, tx, i) - mean[ch]) * inv;
    st(dx, tdx, i, k * (mf * ld(dy, tdy, i) - sums[ch] - xh * sums[c + ch]));
  }
}
