// Max and average pooling, forward and backward, on the project's own kernels (cuDNN's pooling backward was
// slow for channels-last bf16 on an H100: the ResNet-50 stem's max-pool backward took ~4x its memory time).
// Launchers: CudaDevice.maxPool2dForward / maxPool2dBackward / avgPool2dForward / avgPool2dBackward; the CPU
// reference is CpuConv's functions of the same names, and these kernels mirror its arithmetic.
//
// Note [pooling kernels]
// x, dx: logical (n, c, h, w); y, dy: (n, c, oh, ow); one dtype per call, fp32 or bf16 (Note [dtype codes]),
// all in one layout: channels-first (layout 0, NCHW) or channels-last (layout 1, NHWC; Note [channels-last
// tensors] in CudaDevice). Window (p, q) covers input rows p * sh - ph .. + kh - 1 and columns q * sw - pw ..
// + kw - 1, clipped to the tensor (Pool2dDesc: floor mode, padding <= kernel / 2, so no window is empty).
//
// Thread mapping, without atomics, so every run gives the same bits:
//   forward: one thread per output value, or per 8 adjacent channels of an NHWC pixel with vec (channels a
//     multiple of 8, 16-byte aligned pointers: CudaDevice.vec8); the item index runs over the channel groups
//     fastest (NHWC) or over the columns fastest (NCHW), so a warp's loads are coalesced. It scans its window
//     row-major (kh, then kw), as CpuConv does.
//   backward: one thread per INPUT value (or 8 channels of it), gathering from the windows that cover it
//     (rows p0..p1, columns q0..q1 of the output) in row-major window order, the order in which the CPU's
//     scatter adds them up, and storing its dx once: no zero fill, no index buffer.
// Max: a window's value is its FIRST maximum in scan order, padding ignored; NaN propagates (the first NaN
//   wins), ties go to the first, +0 and -0 tie (CpuConv.argmaxWindow: replace when v > m or v is the first
//   NaN). In the backward an input takes a window's dy iff it is that window's first maximum, decided from
//   x alone (y is not read, so any y the layer holds gives the same dx): for an input a that is not NaN,
//   iff every element before it in scan order is < a and every element after it is <= a (a NaN anywhere
//   fails both comparisons, as it would win the CPU's scan); for a NaN input, iff no NaN comes before it.
//   The first rule costs one comparison per element and window; the NaN rule runs only for items that hold
//   a NaN (max_pool_first_nan, the CPU's scan replayed).
// Average: y = (sum of the window's values in scan order, fp32) * (1 / (kh * kw)), the padding counted in
//   the divisor (count_include_pad); the backward adds dy * (1 / (kh * kw)) over the covering windows. inv =
//   1f / (kh * kw) comes from the launcher, computed as the CPU computes it.
// fp32 results are bit-identical to CpuConv's; bf16 values are widened to fp32, computed the same way and
// rounded once when stored, i.e. the CPU's fp32 result on the bf16 inputs, rounded (max: the input itself).
// Speed (the reason these kernels exist): the max backward's cost is the comparisons, ~2.25 windows of 9
// elements per input for the ResNet stem's 3x3/2; bf16 with vec compares two lanes per instruction (HSET2 on
// sm_90), and the window is walked by pointer. Loads of neighbouring threads' windows overlap and hit L1/L2.
// The price of gathering: each input rescans every window covering it, kh * kw elements each, so a large max
// window (a global max pool over a big map) would cost ~(kh * kw)^2 per window and want a per-window argmax
// pass instead; the models use 2x2/2 and 3x3/2 (average pooling's backward reads only dy and has no such cost).
// Indexing: a thread finds its item with 32-bit divisions when the item count is < 2^31 (else 64-bit), starts
// from its plane (NCHW) or sample (NHWC) with a 64-bit offset and addresses within it with 32-bit ones (the
// launcher checks that c * h * w and c * oh * ow are < 2^31). The kernels take one dtype code t for all their
// tensors (the launcher checks that they share it), so each (vec, dtype) pair is its own instantiation.
#pragma once
#include "common.cuh"
#include "vec.cuh"

#define POOL_NHWC 1

// Window geometry; the spatial sizes are ints (Java's dims).
struct PoolGeom {
  int64_t n, c;
  int h, w, oh, ow, kh, kw, sh, sw, ph, pw;
};

// Storage type of the values: bf16 bits or float.
template <bool B>
struct PoolElt {
  typedef float T;
};
template <>
struct PoolElt<true> {
  typedef uint16_t T;
};

// V values (8 with vec, else 1) at p[i] widened to float; and back, rounded once.
template <int V, bool B>
__device__ __forceinline__ void pool_ld(const typename PoolElt<B>::T* p, int i, float* v) {
  if constexpr (V == VEC) {
    ldv(p, B ? DT_BF16 : DT_F32, i, v);
  } else {
    v[0] = ld(p, B ? DT_BF16 : DT_F32, i);
  }
}
template <int V, bool B>
__device__ __forceinline__ void pool_st(typename PoolElt<B>::T* p, int i, const float* v) {
  if constexpr (V == VEC) {
    stv(p, B ? DT_BF16 : DT_F32, i, v);
  } else {
    st(p, B ? DT_BF16 : DT_F32, i, v[0]);
  }
}

// The item a thread handles: V adjacent lanes at (row, col) of a (n, c, gh, gw) tensor. NCHW: s is the plane
// n * c + ch, ch = 0; NHWC: s is the sample n, the lanes are channels ch .. ch + V - 1. In a tensor of the same
// n and c and spatial size (hh, ww), the item's plane (NCHW) or sample (NHWC) starts at s * hh * ww * ps + ch
// (64-bit), and its element (r, q) is (r * ww + q) * ps after that (32-bit: the launcher checks that a sample
// has < 2^31 values), ps = c (NHWC) or 1 (NCHW).
struct PoolItem {
  int64_t s;
  int ch, row, col;
};

template <typename I>
__device__ __forceinline__ PoolItem pool_item(I i, I c, I gh, I gw, int layout, int v) {
  PoolItem t;
  I r = i;
  t.ch = 0;
  if (layout == POOL_NHWC) {
    I groups = c / v;
    r = i / groups;
    t.ch = (int)(i - r * groups) * v;
  }
  I u = r / gw;
  t.col = (int)(r - u * gw);
  I s = u / gh;
  t.row = (int)(u - s * gh);
  t.s = (int64_t)s;
  return t;
}

// Item i of the grid (gh, gw): 32-bit divisions when the item count fits (they cost ~1/4 of 64-bit ones).
__device__ __forceinline__ PoolItem pool_item_at(int64_t i, int64_t total, int64_t c, int gh, int gw, int layout,
                                                 int v) {
  if (total <= INT32_MAX) {
    return pool_item<uint32_t>((uint32_t)i, (uint32_t)c, (uint32_t)gh, (uint32_t)gw, layout, v);
  }
  return pool_item<int64_t>(i, c, gh, gw, layout, v);
}

__device__ __forceinline__ int64_t pool_base(const PoolItem& t, int64_t c, int hh, int ww, int layout) {
  return layout == POOL_NHWC ? t.s * hh * ww * c + t.ch : t.s * hh * ww;
}

// The window of output (p, q), clipped: rows [hs, he), columns [ws, we).
__device__ __forceinline__ void pool_window(const PoolGeom& g, int p, int q, int& hs, int& he, int& ws, int& we) {
  hs = p * g.sh - g.ph;
  ws = q * g.sw - g.pw;
  he = min(hs + g.kh, g.h);
  we = min(ws + g.kw, g.w);
  hs = max(hs, 0);
  ws = max(ws, 0);
}

// The outputs whose windows cover input index i along one axis (size k, stride s, padding pd, o outputs):
// [lo, hi], empty when lo > hi.
__device__ __forceinline__ void pool_cover(int i, int k, int s, int pd, int o, int& lo, int& hi) {
  lo = i + pd < k ? 0 : (i + pd - k) / s + 1;
  hi = min((i + pd) / s, o - 1);
}

// ---------------------------------------------------------------- forward

// One output item: MAX: the window's first maximum (CpuConv.argmaxWindow's comparison); else the fp32 sum of
// the window in scan order times inv.
template <int V, bool B, bool MAX>
__device__ __forceinline__ void pool_fwd(const void* xv, void* yv, const PoolGeom& g, int layout, float inv) {
  typedef typename PoolElt<B>::T T;
  int ps = layout == POOL_NHWC ? (int)g.c : 1;
  int64_t total = g.n * g.c * g.oh * g.ow / V;
  GRID_STRIDE(i, total) {
    PoolItem t = pool_item_at(i, total, g.c, g.oh, g.ow, layout, V);
    const T* x = (const T*)xv + pool_base(t, g.c, g.h, g.w, layout);
    int hs, he, ws, we;
    pool_window(g, t.row, t.col, hs, he, ws, we);
    float r[V];
    if (MAX) {
      pool_ld<V, B>(x, (hs * g.w + ws) * ps, r);  // the first element; comparing it again changes nothing
    } else {
#pragma unroll
      for (int k = 0; k < V; k++) {
        r[k] = 0.f;
      }
    }
    const T* row = x + (hs * g.w + ws) * ps;
    for (int a = hs; a < he; a++, row += g.w * ps) {
      const T* p = row;
      for (int b = ws; b < we; b++, p += ps) {
        float e[V];
        pool_ld<V, B>(p, 0, e);
#pragma unroll
        for (int k = 0; k < V; k++) {
          if (MAX) {
            if (e[k] > r[k] || (e[k] != e[k] && r[k] == r[k])) {
              r[k] = e[k];
            }
          } else {
            r[k] += e[k];
          }
        }
      }
    }
    if (!MAX) {
#pragma unroll
      for (int k = 0; k < V; k++) {
        r[k] *= inv;
      }
    }
    T* y = (T*)yv + pool_base(t, g.c, g.oh, g.ow, layout);
    pool_st<V, B>(y, (t.row * g.ow + t.col) * ps, r);
  }
}

// ---------------------------------------------------------------- max backward

// Packed bf16 comparisons of two bf16x2 words: 0xffff in each half where a < b (LT) or a <= b (else), 0 where
// not or where either half is NaN (ordered comparisons, as float's). One HSET2 on sm_90; two float
// comparisons before.
template <bool LT>
__device__ __forceinline__ uint32_t bf16x2_below(uint32_t a, uint32_t b) {
#if __CUDA_ARCH__ >= 900
  uint32_t r;
  if (LT) {
    asm("set.lt.u32.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  } else {
    asm("set.le.u32.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  }
  return r;
#else
  float a0 = __uint_as_float(a << 16), a1 = __uint_as_float(a & 0xffff0000u);
  float b0 = __uint_as_float(b << 16), b1 = __uint_as_float(b & 0xffff0000u);
  bool lo = LT ? a0 < b0 : a0 <= b0;
  bool hi = LT ? a1 < b1 : a1 <= b1;
  return (lo ? 0x0000ffffu : 0u) | (hi ? 0xffff0000u : 0u);
#endif
}

// The item's own values a as max_pool_first compares the window's elements e with them, lane by lane: pass(p)
// keeps, in the mask, the lanes where e < a (STRICT) or e <= a for the element at p; bits(mask) gives
// bit k = lane k passed. Floats: one comparison per lane.
template <int V, bool B>
struct MaxPoolRef {
  typedef typename PoolElt<B>::T T;
  typedef uint32_t Mask;
  float a[V];
  __device__ __forceinline__ void load(const T* x, int i) { pool_ld<V, B>(x, i, a); }
  __device__ __forceinline__ bool nan() const {
    bool r = false;
#pragma unroll
    for (int k = 0; k < V; k++) {
      r = r || a[k] != a[k];
    }
    return r;
  }
  __device__ __forceinline__ static Mask all() { return (1u << V) - 1; }
  template <bool STRICT>
  __device__ __forceinline__ void pass(const T* p, Mask& ok) const {
    float e[V];
    pool_ld<V, B>(p, 0, e);
#pragma unroll
    for (int k = 0; k < V; k++) {
      if (!(STRICT ? e[k] < a[k] : e[k] <= a[k])) {
        ok &= ~(1u << k);
      }
    }
  }
  __device__ __forceinline__ static uint32_t bits(Mask ok) { return ok; }
};

// bf16 with vec: the 8 values stay packed, two lanes per bf16x2 comparison (4 per window element); mask word
// j holds lane 2j in its low half and lane 2j + 1 in its high half, as ldv unpacks them.
template <>
struct MaxPoolRef<VEC, true> {
  typedef uint16_t T;
  typedef uint4 Mask;
  uint4 a;
  __device__ __forceinline__ void load(const T* x, int i) { a = *(const uint4*)(x + i); }
  __device__ __forceinline__ bool nan() const {
    uint32_t w[4] = {a.x, a.y, a.z, a.w};
    bool r = false;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      r = r || (w[k] & 0x7fffu) > 0x7f80u || (w[k] & 0x7fff0000u) > 0x7f800000u;
    }
    return r;
  }
  __device__ __forceinline__ static Mask all() { return make_uint4(~0u, ~0u, ~0u, ~0u); }
  template <bool STRICT>
  __device__ __forceinline__ void pass(const T* p, Mask& ok) const {
    uint4 e = *(const uint4*)p;
    ok.x &= bf16x2_below<STRICT>(e.x, a.x);
    ok.y &= bf16x2_below<STRICT>(e.y, a.y);
    ok.z &= bf16x2_below<STRICT>(e.z, a.z);
    ok.w &= bf16x2_below<STRICT>(e.w, a.w);
  }
  __device__ __forceinline__ static uint32_t bits(Mask ok) {
    uint32_t w[4] = {ok.x, ok.y, ok.z, ok.w};
    uint32_t r = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      r |= (w[k] & 1u) << (2 * k) | (w[k] >> 31) << (2 * k + 1);
    }
    return r;
  }
};

// Whether input (h0, w0), values ref (none NaN), is the first maximum of window [hs, he) x [ws, we), as a bit
// per lane: every element before it in scan order < a, every one after it <= a (see the Note).
template <int V, bool B>
__device__ __forceinline__ uint32_t max_pool_first(const MaxPoolRef<V, B>& ref, const typename PoolElt<B>::T* x,
                                                   int ps, int w, int hs, int he, int ws, int we, int h0, int w0) {
  typedef typename PoolElt<B>::T T;
  typename MaxPoolRef<V, B>::Mask ok = MaxPoolRef<V, B>::all();
  int cols = we - ws;
  const T* row = x + (hs * w + ws) * ps;  // walks the window by pointer: one add per element
  for (int r = hs; r < h0; r++, row += w * ps) {
    const T* e = row;
    for (int b = 0; b < cols; b++, e += ps) {
      ref.template pass<true>(e, ok);
    }
  }
  const T* e = row;
  for (int b = ws; b < w0; b++, e += ps) {
    ref.template pass<true>(e, ok);
  }
  e += ps;  // the item itself
  for (int b = w0 + 1; b < we; b++, e += ps) {
    ref.template pass<false>(e, ok);
  }
  row += w * ps;
  for (int r = h0 + 1; r < he; r++, row += w * ps) {
    const T* e = row;
    for (int b = 0; b < cols; b++, e += ps) {
      ref.template pass<false>(e, ok);
    }
  }
  return MaxPoolRef<V, B>::bits(ok);
}

// The same decision by replaying the CPU's scan (CpuConv.argmaxWindow) per lane: for items holding a NaN.
template <int V, bool B>
__device__ __forceinline__ uint32_t max_pool_first_nan(const typename PoolElt<B>::T* x, int ps, int w, int hs,
                                                       int he, int ws, int we, int h0, int w0) {
  float m[V];
  pool_ld<V, B>(x, (hs * w + ws) * ps, m);
  uint32_t ok = hs == h0 && ws == w0 ? (1u << V) - 1 : 0u;
  for (int r = hs; r < he; r++) {
    for (int b = ws; b < we; b++) {
      float e[V];
      pool_ld<V, B>(x, (r * w + b) * ps, e);
      bool me = r == h0 && b == w0;
#pragma unroll
      for (int k = 0; k < V; k++) {
        if (e[k] > m[k] || (e[k] != e[k] && m[k] == m[k])) {
          m[k] = e[k];
          ok = me ? ok | (1u << k) : ok & ~(1u << k);
        }
      }
    }
  }
  return ok;
}

// One input item: dx = sum, over the covering windows in row-major order, of dy where the item is the
// window's first maximum.
template <int V, bool B>
__device__ __forceinline__ void max_pool_bwd(const void* xv, const void* dyv, void* dxv, const PoolGeom& g,
                                             int layout) {
  typedef typename PoolElt<B>::T T;
  int ps = layout == POOL_NHWC ? (int)g.c : 1;
  int64_t total = g.n * g.c * g.h * g.w / V;
  GRID_STRIDE(i, total) {
    PoolItem t = pool_item_at(i, total, g.c, g.h, g.w, layout, V);
    int64_t xb = pool_base(t, g.c, g.h, g.w, layout);
    const T* x = (const T*)xv + xb;
    const T* dy = (const T*)dyv + pool_base(t, g.c, g.oh, g.ow, layout);
    int h0 = t.row;
    int w0 = t.col;
    int at = (h0 * g.w + w0) * ps;
    MaxPoolRef<V, B> ref;
    ref.load(x, at);
    bool nan = ref.nan();
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
      acc[k] = 0.f;
    }
    int p0, p1, q0, q1;
    pool_cover(h0, g.kh, g.sh, g.ph, g.oh, p0, p1);
    pool_cover(w0, g.kw, g.sw, g.pw, g.ow, q0, q1);
    for (int p = p0; p <= p1; p++) {
      for (int q = q0; q <= q1; q++) {
        int hs, he, ws, we;
        pool_window(g, p, q, hs, he, ws, we);
        uint32_t ok = !nan ? max_pool_first<V, B>(ref, x, ps, g.w, hs, he, ws, we, h0, w0)
                           : max_pool_first_nan<V, B>(x, ps, g.w, hs, he, ws, we, h0, w0);
        if (ok != 0) {
          float d[V];
          pool_ld<V, B>(dy, (p * g.ow + q) * ps, d);
#pragma unroll
          for (int k = 0; k < V; k++) {
            if (ok & (1u << k)) {
              acc[k] += d[k];
            }
          }
        }
      }
    }
    pool_st<V, B>((T*)dxv + xb, at, acc);
  }
}

// ---------------------------------------------------------------- average backward

// One input item: dx = sum of dy * inv over the covering windows, in row-major order (CpuConv's order).
template <int V, bool B>
__device__ __forceinline__ void avg_pool_bwd(const void* dyv, void* dxv, const PoolGeom& g, int layout,
                                             float inv) {
  typedef typename PoolElt<B>::T T;
  int ps = layout == POOL_NHWC ? (int)g.c : 1;
  int64_t total = g.n * g.c * g.h * g.w / V;
  GRID_STRIDE(i, total) {
    PoolItem t = pool_item_at(i, total, g.c, g.h, g.w, layout, V);
    const T* dy = (const T*)dyv + pool_base(t, g.c, g.oh, g.ow, layout);
    int p0, p1, q0, q1;
    pool_cover(t.row, g.kh, g.sh, g.ph, g.oh, p0, p1);
    pool_cover(t.col, g.kw, g.sw, g.pw, g.ow, q0, q1);
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
      acc[k] = 0.f;
    }
    for (int p = p0; p <= p1; p++) {
      for (int q = q0; q <= q1; q++) {
        float d[V];
        pool_ld<V, B>(dy, (p * g.ow + q) * ps, d);
#pragma unroll
        for (int k = 0; k < V; k++) {
          acc[k] += d[k] * inv;
        }
      }
    }
    T* dx = (T*)dxv + pool_base(t, g.c, g.h, g.w, layout);
    pool_st<V, B>(dx, (t.row * g.w + t.col) * ps, acc);
  }
}

// ---------------------------------------------------------------- entry points

// Calls body<V, B>(args...) for the call's vector width (vec: 8, else 1) and dtype (bf16 or fp32).
#define POOL_DISPATCH(vec, t, body, ...)             \
  do {                                               \
    if (vec) {                                       \
      if ((t) == DT_BF16) {                          \
        body<VEC, true>(__VA_ARGS__);                \
      } else {                                       \
        body<VEC, false>(__VA_ARGS__);               \
      }                                              \
    } else {                                         \
      if ((t) == DT_BF16) {                          \
        body<1, true>(__VA_ARGS__);                  \
      } else {                                       \
        body<1, false>(__VA_ARGS__);                 \
      }                                              \
    }                                                \
  } while (0)

template <int V, bool B>
__device__ __forceinline__ void max_pool_fwd(const void* x, void* y, const PoolGeom& g, int layout) {
  pool_fwd<V, B, true>(x, y, g, layout, 0.f);
}
template <int V, bool B>
__device__ __forceinline__ void avg_pool_fwd(const void* x, void* y, const PoolGeom& g, int layout, float inv) {
  pool_fwd<V, B, false>(x, y, g, layout, inv);
}

// Arguments of every entry point after its tensors and their dtype code t (one dtype per call: the launcher
// checks it): n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, layout (0 NCHW, 1 NHWC), vec (1 only for NHWC with c
// a multiple of 8 and 16-byte aligned pointers). Grids: 1-D, grid-stride over the items (outputs forward,
// inputs backward; 8 channels an item with vec), blocks of any size.
#define POOL_GEOM_PARAMS                                                                                    \
  int64_t n, int64_t c, int h, int w, int oh, int ow, int kh, int kw, int sh, int sw, int ph, int pw, \
      int layout, int vec
#define POOL_GEOM {n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw}

// y = max over each window of x.
extern "C" __global__ void st_max_pool_fwd(const void* x, void* y, int t, POOL_GEOM_PARAMS) {
  PoolGeom g = POOL_GEOM;
  POOL_DISPATCH(vec, t, max_pool_fwd, x, y, g, layout);
}

// y = (sum over each window of x) * inv, inv = 1f / (kh * kw).
extern "C" __global__ void st_avg_pool_fwd(const void* x, void* y, int t, POOL_GEOM_PARAMS, float inv) {
  PoolGeom g = POOL_GEOM;
  POOL_DISPATCH(vec, t, avg_pool_fwd, x, y, g, layout, inv);
}

// dx (overwritten) = dy routed to each window's first maximum of x, summed over overlapping windows.
extern "C" __global__ void st_max_pool_bwd(const void* x, const void* dy, void* dx, int t, POOL_GEOM_PARAMS) {
  PoolGeom g = POOL_GEOM;
  POOL_DISPATCH(vec, t, max_pool_bwd, x, dy, dx, g, layout);
}

// dx (overwritten) = sum over the covering windows of dy * inv.
extern "C" __global__ void st_avg_pool_bwd(const void* dy, void* dx, int t, POOL_GEOM_PARAMS, float inv) {
  PoolGeom g = POOL_GEOM;
  POOL_DISPATCH(vec, t, avg_pool_bwd, dy, dx, g, layout, inv);
}
