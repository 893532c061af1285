// The plain reference GEMM (llm.c habit: a slow, obvious implementation next to the fast one).
// Row-major C(m, n) = alpha * op(A) op(B) + beta * C; one thread per output element, k summed in order in
// fp32. Used by the tests to check cuBLASLt, and as the matmul path when the JNI library cannot load.
#pragma once
#include "common.cuh"

extern "C" __global__ void st_gemm_ref(const void* a, int ta, int transA, int64_t lda, const void* b, int tb,
                                       int transB, int64_t ldb, void* c, int tc, int64_t ldc, int64_t m,
                                       int64_t n, int64_t k, float alpha, float beta) {
  GRID_STRIDE(idx, m * n) {
    int64_t i = idx / n;
    int64_t j = idx % n;
    float s = 0.0f;
    for (int64_t q = 0; q < k; q++) {
      float av = ld(a, ta, transA ? q * lda + i : i * lda + q);
      float bv = ld(b, tb, transB ? j * ldb + q : q * ldb + j);
      s += av * bv;
    }
    float out = alpha * s;
    if (beta != 0.0f) {
      out += beta * ld(c, tc, i * ldc + j);
    }
    st(c, tc, i * ldc + j, out);
  }
}
