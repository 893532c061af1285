// Times the cuBLASLt heuristic's candidate algorithms for the benchmark MLP's three big GEMMs (a diagnostic:
// is the heuristic's first choice the fastest?). Build and run on the GPU machine:
//   nvcc -O2 -o /tmp/gemm_algos benchmarks/gpu/gemm/gemm_algos.cu -lcublasLt && /tmp/gemm_algos [candidates]
// Shapes as CudaDevice maps the row-major calls onto cuBLASLt's column-major view (bf16 in, fp32 compute):
//   forward  y(4096, 8192) = x W^T + bias, ReLU: m=8192 n=4096 k=8192, A=W (T), B=x (N), bf16 out, RELU_BIAS
//   dx       dx(4096, 8192) = dz W:             m=8192 n=4096 k=8192, A=W (N), B=dz (N), bf16 out
//   dW       dW(8192, 8192) = dz^T x:           m=8192 n=8192 k=4096, A=x (N), B=dz (T), bf16 or fp32 out
// Prints, per GEMM, each candidate's median time over 20 launches (after 5) and its TFLOP/s; candidate 0 is
// the heuristic's first choice, the one the engine takes.
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { auto s_ = (x); if ((int)s_ != 0) { printf("%s:%d error %d\n", __FILE__, __LINE__, (int)s_); exit(1); } } while (0)

__global__ void fill(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)(i * 2654435761u) ^ seed;
    h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
    p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f) * 0.1f);
  }
}

struct Gemm { const char* name; bool ta, tb; int64_t m, n, k; cudaDataType_t ct; cublasLtEpilogue_t epi; };

int main(int argc, char** argv) {
  int want = argc > 1 ? atoi(argv[1]) : 16;
  cublasLtHandle_t h; CK(cublasLtCreate(&h));
  size_t big = (size_t)8192 * 8192;
  __nv_bfloat16 *a, *b; void* c; float* bias; void* ws; size_t wsBytes = 32u << 20;
  CK(cudaMalloc(&a, big * 2)); CK(cudaMalloc(&b, big * 2)); CK(cudaMalloc(&c, big * 4));
  CK(cudaMalloc(&bias, 8192 * 4)); CK(cudaMalloc(&ws, wsBytes));
  fill<<<1024, 256>>>(a, big, 1); fill<<<1024, 256>>>(b, big, 2);
  CK(cudaMemset(bias, 0, 8192 * 4)); CK(cudaDeviceSynchronize());
  cudaStream_t st; CK(cudaStreamCreate(&st));
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  Gemm gs[] = {{"forward TN relu+bias bf16", true, false, 8192, 4096, 8192, CUDA_R_16BF, CUBLASLT_EPILOGUE_RELU_BIAS},
               {"dx NN bf16", false, false, 8192, 4096, 8192, CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT},
               {"dW NT bf16", false, true, 8192, 8192, 4096, CUDA_R_16BF, CUBLASLT_EPILOGUE_DEFAULT},
               {"dW NT fp32", false, true, 8192, 8192, 4096, CUDA_R_32F, CUBLASLT_EPILOGUE_DEFAULT}};
  for (const Gemm& g : gs) {
    cublasLtMatmulDesc_t op; CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t oa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, ob = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &oa, sizeof(oa)));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &ob, sizeof(ob)));
    if (g.epi != CUBLASLT_EPILOGUE_DEFAULT) {
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epi, sizeof(g.epi)));
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      cudaDataType_t bt = CUDA_R_16BF;
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.ta ? g.k : g.m));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.tb ? g.n : g.k));
    CK(cublasLtMatrixLayoutCreate(&lc, g.ct, g.m, g.n, g.m));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t wsl = wsBytes;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsl, sizeof(wsl)));
    std::vector<cublasLtMatmulHeuristicResult_t> res(want);
    int found = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, want, res.data(), &found));
    double flop = 2.0 * g.m * g.n * g.k;
    printf("== %s (m=%ld n=%ld k=%ld): %d candidates\n", g.name, (long)g.m, (long)g.n, (long)g.k, found);
    float alpha = 1, beta = 0;
    for (int i = 0; i < found; i++) {
      std::vector<float> ms;
      bool ok = true;
      for (int r = 0; r < 25 && ok; r++) {
        CK(cudaEventRecord(e0, st));
        ok = cublasLtMatmul(h, op, &alpha, a, la, b, lb, &beta, c, lc, c, lc, &res[i].algo, ws, wsBytes, st) ==
             CUBLAS_STATUS_SUCCESS;
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float t; CK(cudaEventElapsedTime(&t, e0, e1));
        if (r >= 5) ms.push_back(t);
      }
      if (!ok) { printf("  [%2d] failed\n", i); continue; }
      std::sort(ms.begin(), ms.end());
      float med = ms[ms.size() / 2];
      int tile = 0, stages = 0, splitk = 0, cluster = 0;
      size_t sz;
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &sz);
      printf("  [%2d] %8.1f us  %6.1f TFLOP/s  ws %8zu  tile %d stages %d splitK %d cluster %d\n", i, med * 1e3,
             flop / (med * 1e-3) / 1e12, res[i].workspaceSize, tile, stages, splitk, cluster);
    }
  }
  printf("done\n");
  return 0;
}
