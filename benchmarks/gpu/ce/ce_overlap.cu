// Does NCCL's copy-engine (zero-CTA) path leave the SMs to the GEMMs? A diagnostic for issue 5's W=2 scaling,
// one process driving every GPU of the machine. Build and run on the GPU machine:
//   nvcc -O2 -o /tmp/ce_overlap benchmarks/gpu/ce/ce_overlap.cu -lcublasLt -lnccl -lcuda && /tmp/ce_overlap
// The communication mimics the sharded optimizer's step (Note [sharded optimizer] in train.Trainer) over a bf16
// buffer of P elements in 25 MiB buckets: per bucket a reduce-scatter of the gradients and an all-gather of the
// bf16 weights. Two ways:
//   kernels: ncclReduceScatter (in place) + ncclAllGather on a default communicator (NCCL's CTAs take SMs);
//   ce:      ncclAlltoAll (each rank receives every rank's copy of its slice, to be summed by the optimizer) +
//            ncclAllGather on a communicator with NCCL_CTA_POLICY_ZERO and buffers from ncclMemAlloc registered
//            as symmetric windows, where NCCL 2.28 moves the bytes with the copy engines.
// Printed per GPU: the GEMM loop alone, each communication alone, and the GEMM loop beside each (the GEMMs on
// all SMs, and with the trainer's 24-SM carve-out beside the kernels), in ms, plus a check of the bytes moved.
// Both streams of a GPU wait on a gate (cuStreamWaitValue32 on pinned host memory) that the host opens once it
// has enqueued everything, so the GEMMs and the communication start together whatever the enqueue costs; times
// are from the gate: when the GEMM stream ends and when the communication stream ends. A watchdog opens the gate
// after 5 s if enqueueing blocks on the device (and says so).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <atomic>
#include <chrono>
#include <thread>

#define CK(x) do { int s_ = (int)(x); if (s_ != 0) { printf("%s:%d error %d\n", __FILE__, __LINE__, s_); exit(1); } } while (0)
#define NK(x) do { ncclResult_t r_ = (x); if (r_ != ncclSuccess) { printf("%s:%d NCCL %s\n", __FILE__, __LINE__, ncclGetErrorString(r_)); exit(1); } } while (0)

__global__ void fill(__nv_bfloat16* p, size_t n, float base) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2bfloat16(base + (float)(i % 97));
}

struct Rank {
  int dev;
  cublasLtHandle_t lt;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatmulAlgo_t algo[133];
  __nv_bfloat16 *a, *b, *c;
  void* ws;
  cudaStream_t sc, sm;
  cudaEvent_t e[4];
  void *g, *r, *m;  // gradients, receive buffer, mirror (ncclMemAlloc)
  ncclWindow_t wg, wr, wm;
  ncclComm_t kcomm, zcomm;
};

static const int64_t GM = 8192, GN = 4096, GK = 8192;  // the MLP's dx GEMM
static const size_t wsBytes = 32u << 20;

static cublasLtMatmulAlgo_t pickAlgo(Rank& k, int smTarget) {
  CK(cublasLtMatmulDescSetAttribute(k.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &smTarget, sizeof(smTarget)));
  cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
  CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof(wsBytes)));
  cublasLtMatmulHeuristicResult_t res; int n = 0;
  CK(cublasLtMatmulAlgoGetHeuristic(k.lt, k.op, k.la, k.lb, k.lc, k.lc, pref, 1, &res, &n));
  if (n == 0) { printf("no algorithm\n"); exit(1); }
  CK(cublasLtMatmulPreferenceDestroy(pref));
  return res.algo;
}

static void gemms(Rank& k, int count, int smTarget) {
  CK(cublasLtMatmulDescSetAttribute(k.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &smTarget, sizeof(smTarget)));
  const cublasLtMatmulAlgo_t& algo = k.algo[smTarget];
  float one = 1, zero = 0;
  for (int i = 0; i < count; i++)
    CK(cublasLtMatmul(k.lt, k.op, &one, k.a, k.la, k.b, k.lb, &zero, k.c, k.lc, k.c, k.lc, &algo, k.ws, wsBytes, k.sc));
}

int main(int argc, char** argv) {
  int nGemm = argc > 1 ? atoi(argv[1]) : 40;
  int commReps = argc > 2 ? atoi(argv[2]) : 7;
  size_t P = (argc > 3 ? atol(argv[3]) : 128l) << 20;  // elements (bf16)
  bool highPriority = argc > 4 && atoi(argv[4]) == 1;  // the communication stream at the highest priority
  int W = 0; CK(cudaGetDeviceCount(&W));
  int version = 0; NK(ncclGetVersion(&version));
  cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, 0));
  int sms = prop.multiProcessorCount;
  size_t bucket = (25u << 20) / 2;  // elements per 25 MiB bucket
  bucket -= bucket % (size_t)(W * 64);
  size_t nb = P / bucket;
  P = nb * bucket;
  printf("%d x %s, %d SMs, NCCL %d, P=%zu bf16 elements in %zu buckets, %d GEMMs %ldx%ldx%ld, comm x%d, comm stream priority %s\n", W,
         prop.name, sms, version, P, nb, nGemm, (long)GM, (long)GN, (long)GK, commReps, highPriority ? "high" : "default");
  std::vector<Rank> rk(W);
  ncclUniqueId id; NK(ncclGetUniqueId(&id));
  ncclUniqueId id2; NK(ncclGetUniqueId(&id2));
  ncclConfig_t kcfg = NCCL_CONFIG_INITIALIZER;
  ncclConfig_t zcfg = NCCL_CONFIG_INITIALIZER;
  zcfg.CTAPolicy = NCCL_CTA_POLICY_ZERO;
  NK(ncclGroupStart());
  for (int i = 0; i < W; i++) { CK(cudaSetDevice(i)); NK(ncclCommInitRankConfig(&rk[i].kcomm, W, id, i, &kcfg)); }
  NK(ncclGroupEnd());
  NK(ncclGroupStart());
  for (int i = 0; i < W; i++) { CK(cudaSetDevice(i)); NK(ncclCommInitRankConfig(&rk[i].zcomm, W, id2, i, &zcfg)); }
  NK(ncclGroupEnd());
  for (int i = 0; i < W; i++) {
    Rank& k = rk[i]; k.dev = i; CK(cudaSetDevice(i));
    CK(cublasLtCreate(&k.lt));
    CK(cublasLtMatmulDescCreate(&k.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatrixLayoutCreate(&k.la, CUDA_R_16BF, GM, GK, GM));
    CK(cublasLtMatrixLayoutCreate(&k.lb, CUDA_R_16BF, GK, GN, GK));
    CK(cublasLtMatrixLayoutCreate(&k.lc, CUDA_R_16BF, GM, GN, GM));
    CK(cudaMalloc(&k.a, GM * GK * 2)); CK(cudaMalloc(&k.b, GK * GN * 2)); CK(cudaMalloc(&k.c, GM * GN * 2));
    CK(cudaMalloc(&k.ws, wsBytes));
    fill<<<1024, 256>>>(k.a, GM * GK, 0.001f); fill<<<1024, 256>>>(k.b, GK * GN, 0.002f);
    for (int c : {1, 2, 4, 8, 24}) k.algo[sms - c] = pickAlgo(k, sms - c);
    k.algo[0] = pickAlgo(k, 0);
    CK(cudaStreamCreateWithFlags(&k.sc, cudaStreamNonBlocking));
    int lo, hi; CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CK(cudaStreamCreateWithPriority(&k.sm, cudaStreamNonBlocking, highPriority ? hi : lo));
    for (auto& e : k.e) CK(cudaEventCreate(&e));
    NK(ncclMemAlloc(&k.g, P * 2)); NK(ncclMemAlloc(&k.r, P * 2)); NK(ncclMemAlloc(&k.m, P * 2));
    fill<<<1024, 256>>>((__nv_bfloat16*)k.g, P, 1000.0f * (i + 1));
    fill<<<1024, 256>>>((__nv_bfloat16*)k.m, P, 0.0f);
    CK(cudaDeviceSynchronize());
  }
  NK(ncclGroupStart());
  for (int i = 0; i < W; i++) {
    CK(cudaSetDevice(i));
    NK(ncclCommWindowRegister(rk[i].zcomm, rk[i].g, P * 2, &rk[i].wg, NCCL_WIN_COLL_SYMMETRIC));
    NK(ncclCommWindowRegister(rk[i].zcomm, rk[i].r, P * 2, &rk[i].wr, NCCL_WIN_COLL_SYMMETRIC));
    NK(ncclCommWindowRegister(rk[i].zcomm, rk[i].m, P * 2, &rk[i].wm, NCCL_WIN_COLL_SYMMETRIC));
  }
  NK(ncclGroupEnd());

  auto comm = [&](bool ce) {
    size_t slice = bucket / W;
    for (int rep = 0; rep < commReps; rep++)
      for (size_t b = 0; b < nb; b++) {
        NK(ncclGroupStart());
        for (int i = 0; i < W; i++) {
          Rank& k = rk[i]; CK(cudaSetDevice(i));
          __nv_bfloat16* g = (__nv_bfloat16*)k.g + b * bucket;
          __nv_bfloat16* m = (__nv_bfloat16*)k.m + b * bucket;
          if (ce) {
            NK(ncclAlltoAll(g, (__nv_bfloat16*)k.r + b * bucket, slice, ncclBfloat16, k.zcomm, k.sm));
            NK(ncclAllGather(m + i * slice, m, slice, ncclBfloat16, k.zcomm, k.sm));
          } else {
            NK(ncclReduceScatter(g, (__nv_bfloat16*)k.r + b * bucket + i * slice, slice, ncclBfloat16, ncclSum,
                                 k.kcomm, k.sm));
            NK(ncclAllGather(m + i * slice, m, slice, ncclBfloat16, k.kcomm, k.sm));
          }
        }
        NK(ncclGroupEnd());
      }
  };
  struct Mode { int carve; int comm; bool gemm; };  // comm: 0 none, 1 kernels, 2 ce
  std::vector<Mode> modes;
  for (int c : {0, 2, 8, 24}) modes.push_back({c, 0, true});
  modes.push_back({0, 1, false}); modes.push_back({0, 2, false});
  modes.push_back({24, 1, true});
  for (int c : {0, 1, 2, 4, 8}) modes.push_back({c, 2, true});
  std::vector<Mode> all(modes);
  all.insert(all.end(), modes.begin(), modes.end());
  volatile uint32_t* gate; CK(cudaHostAlloc((void**)&gate, 64, cudaHostAllocMapped | cudaHostAllocPortable));
  CUdeviceptr gateDev; CK(cudaHostGetDevicePointer((void**)&gateDev, (void*)gate, 0));
  for (const Mode& md : all) {
    *gate = 0;
    for (int i = 0; i < W; i++) {
      CK(cudaSetDevice(i)); CK(cudaDeviceSynchronize());
      CK(cuStreamWaitValue32((CUstream)rk[i].sc, gateDev, 1, CU_STREAM_WAIT_VALUE_GEQ));
      CK(cuStreamWaitValue32((CUstream)rk[i].sm, gateDev, 1, CU_STREAM_WAIT_VALUE_GEQ));
      CK(cudaEventRecord(rk[i].e[0], rk[i].sc));
    }
    std::atomic<bool> opened{false}, forced{false};
    std::thread watchdog([&] {
      for (int t = 0; t < 500 && !opened.load(); t++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!opened.load()) { forced = true; *gate = 1; }
    });
    for (int i = 0; i < W; i++) {
      CK(cudaSetDevice(i));
      if (md.gemm) gemms(rk[i], nGemm, md.carve ? sms - md.carve : 0);
      CK(cudaEventRecord(rk[i].e[1], rk[i].sc));
    }
    if (md.comm) comm(md.comm == 2);
    for (int i = 0; i < W; i++) { CK(cudaSetDevice(i)); CK(cudaEventRecord(rk[i].e[3], rk[i].sm)); }
    *gate = 1;
    opened = true;
    watchdog.join();
    char name[64];
    snprintf(name, sizeof name, "%s%s%s", md.gemm ? "gemm" : "", md.gemm && md.comm ? " + " : "",
             md.comm == 1 ? "kernels comm" : md.comm == 2 ? "ce comm" : "");
    printf("%-22s carve-out %2d", name, md.carve);
    for (int i = 0; i < W; i++) {
      CK(cudaSetDevice(i)); CK(cudaDeviceSynchronize());
      float tg = 0, tc = 0;
      CK(cudaEventElapsedTime(&tg, rk[i].e[0], rk[i].e[1]));
      CK(cudaEventElapsedTime(&tc, rk[i].e[0], rk[i].e[3]));
      double tflops = md.gemm ? 2.0 * GM * GN * GK * nGemm / (tg * 1e-3) / 1e12 : 0;
      printf(" | gpu%d gemms end %.2f ms (%.0f TFLOP/s) comm ends %.2f ms", i, tg, tflops, tc);
    }
    printf("%s\n", forced.load() ? "  (gate forced by the watchdog: enqueueing waited on the device)" : "");
  }
  // check the bytes: after ce alltoall, rank i's r at bucket b, chunk j = rank j's g slice i of bucket b
  {
    size_t slice = bucket / W;
    std::vector<uint16_t> got(slice), want(slice);
    int bad = 0;
    for (int i = 0; i < W; i++)
      for (int j = 0; j < W; j++) {
        size_t b = nb - 1;
        CK(cudaSetDevice(i));
        CK(cudaMemcpy(got.data(), (__nv_bfloat16*)rk[i].r + b * bucket + j * slice, slice * 2, cudaMemcpyDeviceToHost));
        CK(cudaSetDevice(j));
        CK(cudaMemcpy(want.data(), (__nv_bfloat16*)rk[j].g + b * bucket + i * slice, slice * 2, cudaMemcpyDeviceToHost));
        bad += memcmp(got.data(), want.data(), slice * 2) != 0;
      }
    printf("alltoall check: %s\n", bad ? "MISMATCH" : "ok");
  }
  NK(ncclGroupStart());
  for (int i = 0; i < W; i++) {
    CK(cudaSetDevice(i));
    NK(ncclCommWindowDeregister(rk[i].zcomm, rk[i].wg));
    NK(ncclCommWindowDeregister(rk[i].zcomm, rk[i].wr));
    NK(ncclCommWindowDeregister(rk[i].zcomm, rk[i].wm));
  }
  NK(ncclGroupEnd());
  for (int i = 0; i < W; i++) {
    CK(cudaSetDevice(i));
    NK(ncclMemFree(rk[i].g)); NK(ncclMemFree(rk[i].r)); NK(ncclMemFree(rk[i].m));
    NK(ncclCommDestroy(rk[i].kcomm)); NK(ncclCommDestroy(rk[i].zcomm));
  }
  printf("done\n");
  return 0;
}
