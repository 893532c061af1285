// Losses and row-wise ops over (rows, cols) logits: softmax cross-entropy fused with its backward, softmax,
// MSE, argmax and the correct-prediction count. Row-parallel: one warp per row for the softmax family
// (max, then a double sum of exp), one thread per row where the CPU engine's order of float additions is
// kept (mse) or the row is scanned in order (argmax: the first maximum wins).
#pragma once
#include "common.cuh"

#define ROW_WARPS 8  // warps per block for warp-per-row kernels (block = 256 threads)

// losses[r] = -log softmax(z[r])[label]; dz[r] = (softmax(z[r]) - onehot(label)) * gradScale when dz != null.
// A label outside [0, cols) gives NaN in the loss and in the row of dz.
extern "C" __global__ void st_softmax_xent(const void* z, int tz, const int* labels, void* losses, int tl,
                                           void* dz, int tdz, int64_t rows, int64_t cols, float gradScale) {
  int lane = threadIdx.x & 31;
  for (int64_t r = (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * ROW_WARPS) {
    int64_t base = r * cols;
    int label = labels[r];
    bool bad = label < 0 || label >= cols;
    float mx = -INFINITY;
    for (int64_t j = lane; j < cols; j += 32) {
      mx = fmaxf(mx, ld(z, tz, base + j));
    }
    mx = warp_max(mx);
    double sum = 0.0;
    for (int64_t j = lane; j < cols; j += 32) {
      sum += exp((double)(ld(z, tz, base + j) - mx));
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      float logSum = (float)log(sum);
      st(losses, tl, r, bad ? NAN : logSum - (ld(z, tz, base + label) - mx));
    }
    if (dz != nullptr) {
      for (int64_t j = lane; j < cols; j += 32) {
        float pj = (float)(exp((double)(ld(z, tz, base + j) - mx)) / sum);
        float g = (pj - (j == label ? 1.0f : 0.0f)) * gradScale;
        st(dz, tdz, base + j, bad ? NAN : g);
      }
    }
  }
}

extern "C" __global__ void st_softmax(const void* z, int tz, void* p, int tp, int64_t rows, int64_t cols) {
  int lane = threadIdx.x & 31;
  for (int64_t r = (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * ROW_WARPS) {
    int64_t base = r * cols;
    float mx = -INFINITY;
    for (int64_t j = lane; j < cols; j += 32) {
      mx = fmaxf(mx, ld(z, tz, base + j));
    }
    mx = warp_max(mx);
    double sum = 0.0;
    for (int64_t j = lane; j < cols; j += 32) {
      sum += exp((double)(ld(z, tz, base + j) - mx));
    }
    sum = warp_sum(sum);
    for (int64_t j = lane; j < cols; j += 32) {
      st(p, tp, base + j, (float)(exp((double)(ld(z, tz, base + j) - mx)) / sum));
    }
  }
}

// losses[r] = mean_j (pred - target)^2; dpred = 2 (pred - target) / cols * gradScale when dpred != null.
extern "C" __global__ void st_mse(const void* pred, int tp, const void* target, int tt, void* losses, int tl,
                                  void* dpred, int tdp, int64_t rows, int64_t cols, float gradScale) {
  GRID_STRIDE(r, rows) {
    float s = 0.0f;
    float c = (float)cols;
    for (int64_t j = 0; j < cols; j++) {
      int64_t k = r * cols + j;
      float d = ld(pred, tp, k) - ld(target, tt, k);
      s += d * d;
      if (dpred != nullptr) {
        st(dpred, tdp, k, 2.0f * d / c * gradScale);
      }
    }
    st(losses, tl, r, s / c);
  }
}

__device__ __forceinline__ int argmax_row(const void* z, int tz, int64_t base, int64_t cols) {
  int best = 0;
  float bv = ld(z, tz, base);
  for (int64_t j = 1; j < cols; j++) {
    float v = ld(z, tz, base + j);
    if (v > bv) {
      bv = v;
      best = (int)j;
    }
  }
  return best;
}

extern "C" __global__ void st_argmax(const void* z, int tz, int* out, int64_t rows, int64_t cols) {
  GRID_STRIDE(r, rows) { out[r] = argmax_row(z, tz, r * cols, cols); }
}

// The argmax of row base..base+cols with argmax_row's answer (the first maximum; a NaN never wins, except that a
// NaN first element stays the answer), one warp per row: each lane takes the first maximum of its columns
// (lane, lane + 32, ...; NaNs skipped), then the lanes agree on the largest value, the lowest column on ties.
__device__ __forceinline__ int argmax_row_warp(const void* z, int tz, int64_t base, int64_t cols, int lane) {
  float bv = -INFINITY;
  int bi = -1;  // -1: no number seen yet
#pragma unroll 8
  for (int64_t j = lane; j < cols; j += 32) {
    float v = ld(z, tz, base + j);
    if (v == v && (bi < 0 || v > bv)) {
      bv = v;
      bi = (int)j;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  float first = ld(z, tz, base);
  return first != first || bi < 0 ? 0 : bi;
}

// correct[0] += number of rows whose argmax equals the label (one float atomic per block). One warp per row
// (argmax_row_warp): one thread per row read its row one element at a time, 75 us for the benchmark MLP's 4096 x
// 1000 bf16 logits (CUPTI trace). Block ROW_WARPS * 32.
extern "C" __global__ void st_count_correct(const void* z, int tz, const int* labels, float* correct,
                                            int64_t rows, int64_t cols) {
  __shared__ int blockCount;
  if (threadIdx.x == 0) {
    blockCount = 0;
  }
  __syncthreads();
  int lane = threadIdx.x & 31;
  int mine = 0;
  for (int64_t r = (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * ROW_WARPS) {
    int best = argmax_row_warp(z, tz, r * cols, cols, lane);
    mine += lane == 0 && best == labels[r];
  }
  if (mine != 0) {
    atomicAdd(&blockCount, mine);
  }
  __syncthreads();
  if (threadIdx.x == 0 && blockCount != 0) {
    atomicAdd(correct, (float)blockCount);
  }
}
