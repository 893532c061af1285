// Fused optimizers over the flat parameter buffer (one launch per step, whatever the number of tensors).
// Parameters and optimizer state are fp32 (master weights); gradients may be fp32 or bf16.
// Bias corrections (1 - beta^t) are computed on the host in double and rounded to float, as CpuDevice does.
#pragma once
#include "common.cuh"

// Note [summed gradient slices]: every optimizer kernel takes its gradient as gWays slices gStride elements apart
// (gWays = 1: the gradients themselves), except slice gOwnWay (-1: none), which is read from gOwn instead. With more
// than one, the gradient is their sum, added in fp32 in slice order and rounded once to the gradients' type: the
// chunks an all-to-all brought, and this rank's own chunk where backward left it (Note [sharded optimizer] in
// train.Trainer under Note [copy-engine collectives]; engine.GradientSlices), the bits Device.sumSlices would have
// written, read in the update's pass.
__device__ __forceinline__ const void* slice_at(const void* g, int tg, int64_t gStride, int j, const void* gOwn,
                                                int gOwnWay) {
  if (j == gOwnWay) {
    return gOwn;
  }
  return tg == DT_BF16 ? (const void*)((const uint16_t*)g + j * gStride) : (const void*)((const float*)g + j * gStride);
}

__device__ __forceinline__ float ld_sum(const void* g, int tg, int64_t i, int64_t gStride, int gWays,
                                        const void* gOwn, int gOwnWay) {
  float v = ld(slice_at(g, tg, gStride, 0, gOwn, gOwnWay), tg, i);
  if (gWays > 1) {
    for (int j = 1; j < gWays; j++) {
      v += ld(slice_at(g, tg, gStride, j, gOwn, gOwnWay), tg, i);
    }
    if (tg == DT_BF16) {
      v = bf16_to_f32(f32_to_bf16(v));
    }
  }
  return v;
}

// torch.optim.SGD, dampening 0. buf may be null when momentum == 0.
extern "C" __global__ void st_sgd(float* p, const void* g, int tg, float* buf, int64_t n, float lr,
                                  float momentum, int nesterov, float wd, int firstStep, int64_t gStride,
                                  int gWays, const void* gOwn, int gOwnWay) {
  GRID_STRIDE(i, n) {
    float pv = p[i];
    float gv = ld_sum(g, tg, i, gStride, gWays, gOwn, gOwnWay) + wd * pv;
    if (buf != nullptr) {
      float bv = firstStep ? gv : momentum * buf[i] + gv;
      buf[i] = bv;
      gv = nesterov ? gv + momentum * bv : bv;
    }
    p[i] = pv - lr * gv;
  }
}

// torch.optim.AdamW.
extern "C" __global__ void st_adamw(float* p, const void* g, int tg, float* m, float* v, int64_t n, float lr,
                                    float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                                    int64_t gStride, int gWays, const void* gOwn, int gOwnWay) {
  GRID_STRIDE(i, n) {
    float gv = ld_sum(g, tg, i, gStride, gWays, gOwn, gOwnWay);
    float pv = p[i] * (1.0f - lr * wd);
    float mv = beta1 * m[i] + (1.0f - beta1) * gv;
    float vv = beta2 * v[i] + (1.0f - beta2) * gv * gv;
    m[i] = mv;
    v[i] = vv;
    p[i] = pv - lr * (mv / bc1) / ((float)sqrt((double)(vv / bc2)) + eps);
  }
}

// Note [bf16 mirror of the parameters]: with mixed precision the matmuls read a bf16 copy of the
// parameters. These variants of the fused optimizers also write that copy (mirror[i] = bf16(p[i]), round to
// nearest even) in the same pass, so the forward needs no separate cast (one read of the fp32 parameters
// less per step). Same arithmetic as st_sgd / st_adamw, so p gets the same bits.
extern "C" __global__ void st_sgd_m(float* p, const void* g, int tg, float* buf, int64_t n, float lr,
                                    float momentum, int nesterov, float wd, int firstStep, uint16_t* mirror,
                                    int64_t gStride, int gWays, const void* gOwn, int gOwnWay) {
  GRID_STRIDE(i, n) {
    float pv = p[i];
    float gv = ld_sum(g, tg, i, gStride, gWays, gOwn, gOwnWay) + wd * pv;
    if (buf != nullptr) {
      float bv = firstStep ? gv : momentum * buf[i] + gv;
      buf[i] = bv;
      gv = nesterov ? gv + momentum * bv : bv;
    }
    float np = pv - lr * gv;
    p[i] = np;
    mirror[i] = f32_to_bf16(np);
  }
}

extern "C" __global__ void st_adamw_m(float* p, const void* g, int tg, float* m, float* v, int64_t n, float lr,
                                      float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                                      uint16_t* mirror, int64_t gStride, int gWays, const void* gOwn, int gOwnWay) {
  GRID_STRIDE(i, n) {
    float gv = ld_sum(g, tg, i, gStride, gWays, gOwn, gOwnWay);
    float pv = p[i] * (1.0f - lr * wd);
    float mv = beta1 * m[i] + (1.0f - beta1) * gv;
    float vv = beta2 * v[i] + (1.0f - beta2) * gv * gv;
    m[i] = mv;
    v[i] = vv;
    float np = pv - lr * (mv / bc1) / ((float)sqrt((double)(vv / bc2)) + eps);
    p[i] = np;
    mirror[i] = f32_to_bf16(np);
  }
}

// st_sgd_m over 4 elements per thread (16-byte loads and stores; n % 4 == 0, aligned buffers: the flat buffers
// are). Gradients fp32 (16-byte loads) or bf16 (8-byte loads: Note [bf16 gradients] in nn.Model). Same arithmetic
// per element, so the same bits; n counts elements.
// Four gradients from element 4 q of g (aligned vector loads).
__device__ __forceinline__ void ld4(const void* g, int tg, int64_t q, float* ga) {
  if (tg == DT_BF16) {
    uint2 gb = reinterpret_cast<const uint2*>(g)[q];
    ga[0] = bf16_to_f32((uint16_t)(gb.x & 0xffffu));
    ga[1] = bf16_to_f32((uint16_t)(gb.x >> 16));
    ga[2] = bf16_to_f32((uint16_t)(gb.y & 0xffffu));
    ga[3] = bf16_to_f32((uint16_t)(gb.y >> 16));
  } else {
    float4 gv = reinterpret_cast<const float4*>(g)[q];
    ga[0] = gv.x; ga[1] = gv.y; ga[2] = gv.z; ga[3] = gv.w;
  }
}

extern "C" __global__ void st_sgd_m4(float* p, const void* g, int tg, float* buf, int64_t n, float lr,
                                     float momentum, int nesterov, float wd, int firstStep, uint16_t* mirror,
                                     int64_t gStride, int gWays, const void* gOwn, int gOwnWay) {
  int64_t n4 = n / 4;
  GRID_STRIDE(j, n4) {
    float4 pv = reinterpret_cast<float4*>(p)[j];
    float ga[4];
    ld4(slice_at(g, tg, gStride, 0, gOwn, gOwnWay), tg, j, ga);
    if (gWays > 1) { // Note [summed gradient slices] (every slice 8- or 16-byte aligned)
      for (int w = 1; w < gWays; w++) {
        float gb[4];
        ld4(slice_at(g, tg, gStride, w, gOwn, gOwnWay), tg, j, gb);
#pragma unroll
        for (int e = 0; e < 4; e++) {
          ga[e] += gb[e];
        }
      }
      if (tg == DT_BF16) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          ga[e] = bf16_to_f32(f32_to_bf16(ga[e]));
        }
      }
    }
    float pa[4] = {pv.x, pv.y, pv.z, pv.w};
    float ba[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (buf != nullptr && !firstStep) {
      float4 bv = reinterpret_cast<float4*>(buf)[j];
      ba[0] = bv.x; ba[1] = bv.y; ba[2] = bv.z; ba[3] = bv.w;
    }
    uint16_t ma[4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
      float x = ga[e] + wd * pa[e];
      if (buf != nullptr) {
        float bv = firstStep ? x : momentum * ba[e] + x;
        ba[e] = bv;
        x = nesterov ? x + momentum * bv : bv;
      }
      pa[e] = pa[e] - lr * x;
      ma[e] = f32_to_bf16(pa[e]);
    }
    reinterpret_cast<float4*>(p)[j] = make_float4(pa[0], pa[1], pa[2], pa[3]);
    if (buf != nullptr) {
      reinterpret_cast<float4*>(buf)[j] = make_float4(ba[0], ba[1], ba[2], ba[3]);
    }
    uint2 packed;
    packed.x = (uint32_t)ma[0] | ((uint32_t)ma[1] << 16);
    packed.y = (uint32_t)ma[2] | ((uint32_t)ma[3] << 16);
    reinterpret_cast<uint2*>(mirror)[j] = packed;
  }
}

// dst[k] = sum over j < ways of slice j's element k (src[j * n + k], or own[k] for j == ownWay), added in fp32 in order
// j = 0, 1, ..., rounded once to dst's type (the chunks an all-to-all brought, summed: Note [summed gradient slices];
// Device.sumSlices). vec4: n % 4 == 0 and every slice and dst 8-byte (bf16) or 16-byte (fp32) aligned; then 4 elements
// per thread, the same arithmetic.
extern "C" __global__ void st_sum_slices(const void* src, void* dst, int t, int64_t n, int ways, int vec4,
                                         const void* own, int ownWay) {
  if (vec4) {
    int64_t n4 = n / 4;
    GRID_STRIDE(q, n4) {
      float a[4];
      for (int j = 0; j < ways; j++) {
        float c[4];
        ld4(slice_at(src, t, n, j, own, ownWay), t, q, c);
#pragma unroll
        for (int e = 0; e < 4; e++) {
          a[e] = j == 0 ? c[e] : a[e] + c[e];  // the first as it is (so -0 + -0 stays -0, as NCCL's sum)
        }
      }
      if (t == DT_BF16) {
        uint2 packed;
        packed.x = (uint32_t)f32_to_bf16(a[0]) | ((uint32_t)f32_to_bf16(a[1]) << 16);
        packed.y = (uint32_t)f32_to_bf16(a[2]) | ((uint32_t)f32_to_bf16(a[3]) << 16);
        reinterpret_cast<uint2*>(dst)[q] = packed;
      } else {
        reinterpret_cast<float4*>(dst)[q] = make_float4(a[0], a[1], a[2], a[3]);
      }
    }
    return;
  }
  GRID_STRIDE(k, n) {
    float v = ld(slice_at(src, t, n, 0, own, ownWay), t, k);
    for (int j = 1; j < ways; j++) {
      v += ld(slice_at(src, t, n, j, own, ownWay), t, k);
    }
    st(dst, t, k, v);
  }
}
