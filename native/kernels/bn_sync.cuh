// Batch norm on the project's own kernels, per rank and synchronised (SyncBatchNorm): the training forward
// and backward split at the two points where the synchronised layer all-reduces per-channel sums across ranks
// (Note [synchronised batch norm] in dev.sparktrainer.nn.BatchNorm2d); the per-rank ops run the same kernels
// without the all-reduce, optionally with the ReLU that follows fused in (Note [fused batch norm + ReLU] in
// CudaDevice). Launchers: CudaDevice.batchNormStats / batchNormFinalizeStats / batchNormApply /
// batchNormBackwardReduce / batchNormBackwardApply / batchNormForwardTraining / batchNormBackward, and the
// convolution bias (gradient) of CudaDevice.conv2dForward / conv2dBackwardFilter; the CPU reference is
// CpuConv's functions of the same names, and these kernels mirror its arithmetic operation by operation.
//
// x, y, dy, dx: logical (n, c, hw), fp32 or bf16 (dtype codes, Note [dtype codes]), stored channels-first
// (layout 0, NCHW: [n][c][hw]) or channels-last (layout 1, NHWC: [n][hw][c]; Note [channels-last tensors] in
// CudaDevice); per-channel tensors fp32.
//
// Reductions (sums over the n * hw values of each channel, in double, rounded to float once) are
// deterministic, without atomics: every thread sums a fixed share of the values, and the shares are added in
// a fixed order, so a shape gives the same bits on every run. Both layouts write one double partial per
// (chunk, channel) and st_bn_partials_final adds the chunks; chunks exist so that the grid fills the GPU
// when channels are few (64 channels would otherwise be 64 blocks on 132 SMs).
//   NCHW: block (channel, chunk of samples); the threads walk the chunk's planes (contiguous hw values).
//   NHWC: a channel's values are c apart, so one block per channel would read a 32-byte sector per value.
//         Instead a block of 256 threads covers up to 256 groups of V adjacent channels (V = 8 vectorised, else
//         1) and 256 / groups rows at a time, so a warp reads whole rows; each thread keeps its channels while
//         it strides the chunk's rows, and the threads' shares are added in row order through shared memory.
// With vec (vec.cuh: 16-byte aligned pointers, planes (NCHW) or rows (NHWC) a multiple of 8 values) threads
// load 8 values at a time, two loads in flight; the NHWC reduction, the one ResNets run, keeps 4 rows in flight
// for the statistics and 2 (x and dy) for the backward, and adds the terms of one iteration (at most 4 per
// channel) in float before adding them to its double sums: the sums then differ from exact ones by a few units
// of fp32 rounding of those small groups (CudaSyncBatchNormTest's bound), not just by the final rounding. Pass 2 (st_bn_partials_final) gives each channel a warp whose
// lanes take fixed shares of the chunks, added by warp_sum's fixed tree (a loop of one thread per channel over
// hundreds of chunks was latency-bound: ~0.2 ms per call).
// Elementwise passes (apply, backward apply, conv bias) load a thread's per-channel parameters once: NCHW
// grids run over (plane, part of the plane), NHWC blocks as the reduction's.
#pragma once
#include "common.cuh"
#include "reduce.cuh"
#include "vec.cuh"

// The two sums of one value i, by mode: 0 (statistics) [x, x^2]; 1 (backward) [dy, dy * xhat] with
// xhat = (x - mu) * inv in float, as CpuConv.batchNormBackwardReduce; 2 (backward through a fused ReLU) as 1
// with dy replaced by 0 where the forward's output relu(xhat * gam + bet) was 0; 3 (a bias gradient) [dy, 0].
__device__ __forceinline__ void bn_terms(int mode, const void* x, int tx, const void* dy, int tdy, float mu,
                                         float inv, float gam, float bet, int64_t i, double& s, double& q) {
  if (mode == 0) {
    double v = (double)ld(x, tx, i);
    s += v;
    q += v * v;
  } else if (mode == 3) {
    s += (double)ld(dy, tdy, i);
  } else {
    float g = ld(dy, tdy, i);
    float xh = (ld(x, tx, i) - mu) * inv;
    if (mode == 2 && !(xh * gam + bet > 0.f)) {
      g = 0.f;
    }
    s += (double)g;
    q += (double)(g * xh);
  }
}

// Per-channel parameters of bn_terms (null pointers read as 0: modes 0 and 3 need none).
__device__ __forceinline__ void bn_channel_params(int64_t ch, const float* mean, const float* inv_std,
                                                  const float* gamma, const float* beta, float& mu, float& inv,
                                                  float& gam, float& bet) {
  mu = mean != nullptr ? mean[ch] : 0.f;
  inv = inv_std != nullptr ? inv_std[ch] : 0.f;
  gam = gamma != nullptr ? gamma[ch] : 0.f;
  bet = beta != nullptr ? beta[ch] : 0.f;
}

// bn_terms for a value already loaded (the vectorised paths): v = x, d = dy; the same arithmetic.
__device__ __forceinline__ void bn_terms_v(int mode, float v, float d, float mu, float inv, float gam, float bet,
                                           double& s, double& q) {
  if (mode == 0) {
    double w = (double)v;
    s += w;
    q += w * w;
  } else if (mode == 3) {
    s += (double)d;
  } else {
    float xh = (v - mu) * inv;
    float g = d;
    if (mode == 2 && !(xh * gam + bet > 0.f)) {
      g = 0.f;
    }
    s += (double)g;
    q += (double)(g * xh);
  }
}

// V values at i as float (vectorised when V == 8), and back.
template <int V>
__device__ __forceinline__ void ld_n(const void* p, int t, int64_t i, float* v) {
  if (V == VEC) {
    ldv(p, t, i, v);
  } else {
    v[0] = ld(p, t, i);
  }
}
template <int V>
__device__ __forceinline__ void st_n(void* p, int t, int64_t i, const float* v) {
  if (V == VEC) {
    stv(p, t, i, v);
  } else {
    st(p, t, i, v[0]);
  }
}

#define BN_THREADS 256  // threads per block of the NHWC reduction and of the NHWC elementwise passes

// NCHW, pass 1: block (ch = blockIdx.x, chunk = blockIdx.y) sums bn_terms over samples [chunk * per_chunk, ...)
// of channel ch; partials[(chunk * c + ch) * 2 + k] = sum k in double. Scalar: planes of hw >= blockDim.x are
// strided by the threads; smaller planes split the block into blockDim.x / hw groups of hw threads, group j
// taking samples j, j + groups, ... (no division per value). vec: the chunk's 8-value vectors in order.
extern "C" __global__ void st_bn_partials_nchw(int mode, const void* x, int tx, const void* dy, int tdy,
                                               const float* mean, const float* inv_std, const float* gamma,
                                               const float* beta, double* partials, int64_t n, int64_t c,
                                               int64_t hw, int64_t per_chunk, int vec) {
  int64_t ch = blockIdx.x;
  int64_t b0 = (int64_t)blockIdx.y * per_chunk;
  int64_t b1 = min(n, b0 + per_chunk);
  float mu, inv, gam, bet;
  bn_channel_params(ch, mean, inv_std, gamma, beta, mu, inv, gam, bet);
  double s = 0.0;
  double q = 0.0;
  if (vec) {
    int64_t nv = hw / VEC;  // vectors per plane
    int64_t total = (b1 - b0) * nv;
    for (int64_t m = threadIdx.x; m < total; m += 2 * (int64_t)blockDim.x) {
      float xv[2][VEC], dv[2][VEC];
      int64_t i[2];
      bool has1 = m + blockDim.x < total;
#pragma unroll
      for (int u = 0; u < 2; u++) {
        int64_t mm = m + u * (int64_t)blockDim.x;
        if (u == 0 || has1) {
          int64_t b = b0 + mm / nv;
          i[u] = (b * c + ch) * hw + (mm % nv) * VEC;
          if (mode != 3) ldv(x, tx, i[u], xv[u]);
          if (mode != 0) ldv(dy, tdy, i[u], dv[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < 2; u++) {
        if (u == 0 || has1) {
#pragma unroll
          for (int k = 0; k < VEC; k++) {
            bn_terms_v(mode, mode != 3 ? xv[u][k] : 0.f, mode != 0 ? dv[u][k] : 0.f, mu, inv, gam, bet, s, q);
          }
        }
      }
    }
  } else if (hw >= (int64_t)blockDim.x) {
    for (int64_t b = b0; b < b1; b++) {
      int64_t base = (b * c + ch) * hw;
      for (int64_t p = threadIdx.x; p < hw; p += blockDim.x) {
        bn_terms(mode, x, tx, dy, tdy, mu, inv, gam, bet, base + p, s, q);
      }
    }
  } else {
    int64_t groups = blockDim.x / hw;
    int64_t g = threadIdx.x / hw;
    int64_t p = threadIdx.x - g * hw;
    if (g < groups) {
      for (int64_t b = b0 + g; b < b1; b += groups) {
        bn_terms(mode, x, tx, dy, tdy, mu, inv, gam, bet, (b * c + ch) * hw + p, s, q);
      }
    }
  }
  s = block_sum(s);
  q = block_sum(q);
  if (threadIdx.x == 0) {
    partials[((int64_t)blockIdx.y * c + ch) * 2] = s;
    partials[((int64_t)blockIdx.y * c + ch) * 2 + 1] = q;
  }
}

// The NHWC thread layout (see the header): groups of V channels per row, gpb groups per block (block tile
// blockIdx.x), rpi rows at a time; thread (ro, lg) takes group g = blockIdx.x * gpb + lg from row offset ro.
struct NhwcLanes {
  int gpb, rpi, ro, lg;
  int64_t g;
  bool active;
  __device__ NhwcLanes(int64_t c, int v) {
    int64_t groups = c / v;
    gpb = (int)min(groups, (int64_t)BN_THREADS);
    rpi = BN_THREADS / gpb;
    ro = threadIdx.x / gpb;
    lg = threadIdx.x - ro * gpb;
    g = (int64_t)blockIdx.x * gpb + lg;
    active = ro < rpi && g < groups;
  }
};

// NHWC, pass 1: block (channel tile blockIdx.x, row chunk blockIdx.y) over rows [by * rows_per_chunk, ...);
// partials[(by * c + ch) * 2 + k] = the chunk's sum k of channel ch. vec: V = 8 channels per thread. The mode is
// a template argument (the statistics pass carries no dy and no parameters, so it keeps more loads in flight:
// U = 4 rows per iteration, 2 in the backward modes); each iteration's U terms per channel are summed in float,
// then added to the thread's double sums (see the header: sums of at most 4 float terms, then double).
template <int V, int MODE>
__device__ __forceinline__ void bn_partials_nhwc(const void* x, int tx, const void* dy, int tdy, const float* mean,
                                                 const float* inv_std, const float* gamma, const float* beta,
                                                 double* partials, int64_t rows, int64_t c, int64_t rows_per_chunk,
                                                 double (*sh)[BN_THREADS * VEC]) {
  constexpr int U = (MODE == 0 || MODE == 3) ? 4 : 2;
  NhwcLanes L(c, V);
  int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
  int64_t r1 = min(rows, r0 + rows_per_chunk);
  double s[V], q[V];
  float mu[V], inv[V], gam[V], bet[V];
#pragma unroll
  for (int k = 0; k < V; k++) {
    s[k] = 0.0;
    q[k] = 0.0;
    if (L.active) {
      bn_channel_params(L.g * V + k, MODE == 1 || MODE == 2 ? mean : nullptr,
                        MODE == 1 || MODE == 2 ? inv_std : nullptr, MODE == 2 ? gamma : nullptr,
                        MODE == 2 ? beta : nullptr, mu[k], inv[k], gam[k], bet[k]);
    }
  }
  if (L.active) {
    int64_t ch0 = L.g * V;
    for (int64_t r = r0 + L.ro; r < r1; r += U * (int64_t)L.rpi) {
      float xv[U][V], dv[U][V];
#pragma unroll
      for (int u = 0; u < U; u++) {
        int64_t rr = r + u * (int64_t)L.rpi;
        int64_t i = rr * c + ch0;
#pragma unroll
        for (int k = 0; k < V; k++) {
          xv[u][k] = 0.f;
          dv[u][k] = 0.f;
        }
        if (rr < r1) {
          if (MODE != 3) ld_n<V>(x, tx, i, xv[u]);
          if (MODE != 0) ld_n<V>(dy, tdy, i, dv[u]);
        }
      }
#pragma unroll
      for (int k = 0; k < V; k++) {
        float fs = 0.f, fq = 0.f;
#pragma unroll
        for (int u = 0; u < U; u++) {
          if (MODE == 0) {
            fs += xv[u][k];
            fq += xv[u][k] * xv[u][k];
          } else if (MODE == 3) {
            fs += dv[u][k];
          } else {
            float xh = (xv[u][k] - mu[k]) * inv[k];
            float g = dv[u][k];
            if (MODE == 2 && !(xh * gam[k] + bet[k] > 0.f)) {
              g = 0.f;
            }
            fs += g;
            fq += g * xh;
          }
        }
        s[k] += (double)fs;
        q[k] += (double)fq;
      }
    }
  }
  int width = L.gpb * V;  // channels of this tile
  if (L.active) {
#pragma unroll
    for (int k = 0; k < V; k++) {
      sh[0][L.ro * width + L.lg * V + k] = s[k];
      sh[1][L.ro * width + L.lg * V + k] = q[k];
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < width; j += BN_THREADS) {
    int64_t ch = (int64_t)blockIdx.x * width + j;
    if (ch < c) {
      double ss = 0.0, qq = 0.0;
      for (int o = 0; o < L.rpi; o++) {  // fixed order
        ss += sh[0][o * width + j];
        qq += sh[1][o * width + j];
      }
      partials[((int64_t)blockIdx.y * c + ch) * 2] = ss;
      partials[((int64_t)blockIdx.y * c + ch) * 2 + 1] = qq;
    }
  }
}

// bn_partials_nhwc for one mode, vectorised or not.
template <int MODE>
__device__ __forceinline__ void bn_partials_nhwc_vec(int vec, const void* x, int tx, const void* dy, int tdy,
                                                     const float* mean, const float* inv_std, const float* gamma,
                                                     const float* beta, double* partials, int64_t rows, int64_t c,
                                                     int64_t rows_per_chunk, double (*sh)[BN_THREADS * VEC]) {
  if (vec) {
    bn_partials_nhwc<VEC, MODE>(x, tx, dy, tdy, mean, inv_std, gamma, beta, partials, rows, c, rows_per_chunk, sh);
  } else {
    bn_partials_nhwc<1, MODE>(x, tx, dy, tdy, mean, inv_std, gamma, beta, partials, rows, c, rows_per_chunk, sh);
  }
}

// Two entry points so that each gets the registers of its own modes: the one-tensor sums (mode 0 statistics,
// mode 3 bias gradient) keep 4 rows of 8 values in flight with fewer registers than the backward modes (1, 2).
extern "C" __global__ void __launch_bounds__(BN_THREADS, 3)
    st_bn_sums_nhwc(int mode, const void* x, int tx, const void* dy, int tdy, double* partials, int64_t rows,
                    int64_t c, int64_t rows_per_chunk, int vec) {
  __shared__ double sh[2][BN_THREADS * VEC];  // the threads' sums, [sum k][row offset * width + channel]
  if (mode == 0) {
    bn_partials_nhwc_vec<0>(vec, x, tx, dy, tdy, nullptr, nullptr, nullptr, nullptr, partials, rows, c, rows_per_chunk,
                            sh);
  } else {
    bn_partials_nhwc_vec<3>(vec, x, tx, dy, tdy, nullptr, nullptr, nullptr, nullptr, partials, rows, c, rows_per_chunk,
                            sh);
  }
}

extern "C" __global__ void __launch_bounds__(BN_THREADS)
    st_bn_partials_nhwc(int mode, const void* x, int tx, const void* dy, int tdy, const float* mean,
                        const float* inv_std, const float* gamma, const float* beta, double* partials, int64_t rows,
                        int64_t c, int64_t rows_per_chunk, int vec) {
  __shared__ double sh[2][BN_THREADS * VEC];  // the threads' sums, [sum k][row offset * width + channel]
  if (mode == 1) {
    bn_partials_nhwc_vec<1>(vec, x, tx, dy, tdy, mean, inv_std, gamma, beta, partials, rows, c, rows_per_chunk, sh);
  } else {
    bn_partials_nhwc_vec<2>(vec, x, tx, dy, tdy, mean, inv_std, gamma, beta, partials, rows, c, rows_per_chunk, sh);
  }
}

// Pass 2 (both layouts): per channel (one warp) the chunks' partials added in a fixed order (each lane a fixed
// share, then warp_sum's tree), rounded to float once:
// out(2c) = [sums 0, sums 1] when out is not null; acc0(c) += sums 0 and acc1(c) += sums 1 when not null
// (a gradient: dbeta and dgamma, or a convolution's dbias).
extern "C" __global__ void st_bn_partials_final(const double* partials, int64_t chunks, int64_t c, float* out,
                                                float* acc0, float* acc1) {
  int lane = threadIdx.x & 31;
  int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t ch = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; ch < c; ch += warps) {
    double s = 0.0;
    double q = 0.0;
    for (int64_t k = lane; k < chunks; k += 32) {
      s += partials[(k * c + ch) * 2];
      q += partials[(k * c + ch) * 2 + 1];
    }
    s = warp_sum(s);
    q = warp_sum(q);
    if (lane != 0) {
      continue;
    }
    if (out != nullptr) {
      out[ch] = (float)s;
      out[c + ch] = (float)q;
    }
    if (acc0 != nullptr) {
      acc0[ch] = acc0[ch] + (float)s;
    }
    if (acc1 != nullptr) {
      acc1[ch] = acc1[ch] + (float)q;
    }
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

// Elementwise per-channel passes. prep(ch0, step) loads the per-channel parameters of a thread's values once
// (value k of a group of V has channel ch0 + k * step), then f(i0, i1) transforms the V values from i0 and,
// when i1 >= 0, those from i1 (two groups per call, loaded before either is stored, so two loads are in
// flight even where the output may alias the input); V = 8 with vec, else 1. NCHW grid (planes, parts of a
// plane), the plane n * c + ch0 = blockIdx.x, step 0; NHWC blocks of BN_THREADS as the reduction's
// (NhwcLanes), grid (channel tiles, row chunks), each thread keeping its channels while it strides the rows,
// step 1.
template <int V, typename P, typename F>
__device__ __forceinline__ void per_channel(int64_t n, int64_t c, int64_t hw, int layout, P prep, F f) {
  if (layout == 0) {
    int64_t plane = blockIdx.x;
    prep(plane % c, 0);
    int64_t base = plane * hw;
    int64_t stride = (int64_t)gridDim.y * blockDim.x * V;
    for (int64_t p = ((int64_t)blockIdx.y * blockDim.x + threadIdx.x) * V; p < hw; p += 2 * stride) {
      f(base + p, p + stride < hw ? base + p + stride : -1);
    }
  } else {
    NhwcLanes L(c, V);
    if (!L.active) {
      return;
    }
    prep(L.g * V, 1);
    int64_t rows = n * hw;
    int64_t stride = (int64_t)gridDim.y * L.rpi;
    for (int64_t r = (int64_t)blockIdx.y * L.rpi + L.ro; r < rows; r += 2 * stride) {
      f(r * c + L.g * V, r + stride < rows ? (r + stride) * c + L.g * V : -1);
    }
  }
}

template <int V>
__device__ __forceinline__ void bn_apply(const void* x, int tx, void* y, int ty, const float* gamma,
                                         const float* beta, const float* mean, const float* inv_std, int64_t n,
                                         int64_t c, int64_t hw, int layout, int relu) {
  float mu[V], inv[V], gam[V], bet[V];
  per_channel<V>(
      n, c, hw, layout,
      [&](int64_t ch0, int step) {
#pragma unroll
        for (int k = 0; k < V; k++) {
          int64_t ch = ch0 + k * step;
          mu[k] = mean[ch];
          inv[k] = inv_std[ch];
          gam[k] = gamma[ch];
          bet[k] = beta[ch];
        }
      },
      [&](int64_t i0, int64_t i1) {
        float v[2][V];
        ld_n<V>(x, tx, i0, v[0]);
        if (i1 >= 0) ld_n<V>(x, tx, i1, v[1]);
#pragma unroll
        for (int u = 0; u < 2; u++) {
#pragma unroll
          for (int k = 0; k < V; k++) {
            float o = (v[u][k] - mu[k]) * inv[k] * gam[k] + bet[k];
            v[u][k] = relu && !(o > 0.f) ? 0.f : o;
          }
        }
        st_n<V>(y, ty, i0, v[0]);
        if (i1 >= 0) st_n<V>(y, ty, i1, v[1]);
      });
}

// y = (x - mean) * inv_std * gamma + beta per channel, in float (rounded once to y's dtype), then max(y, 0)
// when relu; y in x's layout (may be x itself).
extern "C" __global__ void st_bn_apply(const void* x, int tx, void* y, int ty, const float* gamma, const float* beta,
                                       const float* mean, const float* inv_std, int64_t n, int64_t c, int64_t hw,
                                       int layout, int relu, int vec) {
  if (vec) {
    bn_apply<VEC>(x, tx, y, ty, gamma, beta, mean, inv_std, n, c, hw, layout, relu);
  } else {
    bn_apply<1>(x, tx, y, ty, gamma, beta, mean, inv_std, n, c, hw, layout, relu);
  }
}

template <int V>
__device__ __forceinline__ void bn_bwd_apply(const void* x, int tx, const void* dy, int tdy, const float* gamma,
                                             const float* beta, const float* mean, const float* inv_std,
                                             const float* sums, float mf, void* dx, int tdx, int64_t n, int64_t c,
                                             int64_t hw, int layout, int relu) {
  float mu[V], inv[V], gam[V], bet[V], s0[V], s1[V], kk[V];
  per_channel<V>(
      n, c, hw, layout,
      [&](int64_t ch0, int step) {
#pragma unroll
        for (int k = 0; k < V; k++) {
          int64_t ch = ch0 + k * step;
          mu[k] = mean[ch];
          inv[k] = inv_std[ch];
          gam[k] = gamma[ch];
          bet[k] = relu ? beta[ch] : 0.f;
          s0[k] = sums[ch];
          s1[k] = sums[c + ch];
          kk[k] = gam[k] * inv[k] / mf;  // per channel: the same float operations as per value
        }
      },
      [&](int64_t i0, int64_t i1) {
        float xv[2][V], g[2][V];
        ld_n<V>(x, tx, i0, xv[0]);
        ld_n<V>(dy, tdy, i0, g[0]);
        if (i1 >= 0) {
          ld_n<V>(x, tx, i1, xv[1]);
          ld_n<V>(dy, tdy, i1, g[1]);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
#pragma unroll
          for (int k = 0; k < V; k++) {
            float xh = (xv[u][k] - mu[k]) * inv[k];
            float gk = g[u][k];
            if (relu && !(xh * gam[k] + bet[k] > 0.f)) {
              gk = 0.f;
            }
            g[u][k] = kk[k] * (mf * gk - s0[k] - xh * s1[k]);
          }
        }
        st_n<V>(dx, tdx, i0, g[0]);
        if (i1 >= 0) st_n<V>(dx, tdx, i1, g[1]);
      });
}

// dx = k * (mf * g - sum_dy - xhat * sum_dy_xhat), k = gamma * inv_std / mf, mf = (float) M; in float; g = dy,
// or (relu: the forward fused a ReLU, beta given) 0 where the forward's output was 0. dx may be dy itself.
extern "C" __global__ void st_bn_bwd_apply(const void* x, int tx, const void* dy, int tdy, const float* gamma,
                                           const float* beta, const float* mean, const float* inv_std,
                                           const float* sums, float mf, void* dx, int tdx, int64_t n, int64_t c,
                                           int64_t hw, int layout, int relu, int vec) {
  if (vec) {
    bn_bwd_apply<VEC>(x, tx, dy, tdy, gamma, beta, mean, inv_std, sums, mf, dx, tdx, n, c, hw, layout, relu);
  } else {
    bn_bwd_apply<1>(x, tx, dy, tdy, gamma, beta, mean, inv_std, sums, mf, dx, tdx, n, c, hw, layout, relu);
  }
}
