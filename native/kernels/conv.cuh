// Kernels of the convolutional layers that cuDNN does not cover the way the layers need: the per-channel
// bias of a convolution (forward, optionally with the ReLU that follows), layout conversion, the residual add.
// Launchers: CudaDevice.conv2dForward / convertLayout / add. Layout 0 = NCHW, 1 = NHWC.
#pragma once
#include "common.cuh"
#include "bn_sync.cuh"

template <int V>
__device__ __forceinline__ void channel_bias(void* y, int ty, const float* bias, int64_t n, int64_t c, int64_t hw,
                                             int layout, int relu) {
  float b[V];
  per_channel<V>(
      n, c, hw, layout,
      [&](int64_t ch0, int step) {
#pragma unroll
        for (int k = 0; k < V; k++) {
          b[k] = bias[ch0 + k * step];
        }
      },
      [&](int64_t i0, int64_t i1) {
        float v[2][V];
        ld_n<V>(y, ty, i0, v[0]);
        if (i1 >= 0) ld_n<V>(y, ty, i1, v[1]);
#pragma unroll
        for (int u = 0; u < 2; u++) {
#pragma unroll
          for (int k = 0; k < V; k++) {
            float o = v[u][k] + b[k];
            v[u][k] = relu && !(o > 0.f) ? 0.f : o;
          }
        }
        st_n<V>(y, ty, i0, v[0]);
        if (i1 >= 0) st_n<V>(y, ty, i1, v[1]);
      });
}

// y(n, c, hw) += bias(c), then max(y, 0) when relu; y fp32 or bf16 (rounded once), bias fp32. Grid as
// bn_sync.cuh's per_channel. (The bias gradient is bn_sync.cuh's reduction in mode 3.)
extern "C" __global__ void st_channel_bias(void* y, int ty, const float* bias, int64_t n, int64_t c, int64_t hw,
                                           int layout, int relu, int vec) {
  if (vec) {
    channel_bias<VEC>(y, ty, bias, n, c, hw, layout, relu);
  } else {
    channel_bias<1>(y, ty, bias, n, c, hw, layout, relu);
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
// instead of a copy and an axpy; then max(y, 0) when relu (a residual block's final ReLU, fused).
extern "C" __global__ void st_add2(const void* a, int ta, const void* b, int tb, void* y, int ty, int64_t n,
                                   int relu, int vec) {
  if (vec) {
    binary_vec(a, ta, b, tb, y, ty, n, [&](float u, float w) {
      float v = u + w;
      return relu && !(v > 0.f) ? 0.f : v;
    });
    return;
  }
  GRID_STRIDE(i, n) {
    float v = ld(a, ta, i) + ld(b, tb, i);
    st(y, ty, i, relu && !(v > 0.f) ? 0.f : v);
  }
}
