// Fused optimizers over the flat parameter buffer (one launch per step, whatever the number of tensors).
// Parameters and optimizer state are fp32 (master weights); gradients may be fp32 or bf16.
// Bias corrections (1 - beta^t) are computed on the host in double and rounded to float, as CpuDevice does.
#pragma once
#include "common.cuh"

// torch.optim.SGD, dampening 0. buf may be null when momentum == 0.
extern "C" __global__ void st_sgd(float* p, const void* g, int tg, float* buf, int64_t n, float lr,
                                  float momentum, int nesterov, float wd, int firstStep) {
  GRID_STRIDE(i, n) {
    float pv = p[i];
    float gv = ld(g, tg, i) + wd * pv;
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
                                    float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
  GRID_STRIDE(i, n) {
    float gv = ld(g, tg, i);
    float pv = p[i] * (1.0f - lr * wd);
    float mv = beta1 * m[i] + (1.0f - beta1) * gv;
    float vv = beta2 * v[i] + (1.0f - beta2) * gv * gv;
    m[i] = mv;
    v[i] = vv;
    p[i] = pv - lr * (mv / bc1) / ((float)sqrt((double)(vv / bc2)) + eps);
  }
}
