// libsparktrainer_jni.so: the thin JNI layer over NCCL, cuBLASLt and cuDNN (DESIGN.md, "Engine split").
//
// Java side: dev.sparktrainer.cuda.Native (one flat, package-private class). Rules of this file:
//  - every function returns a status (int): 0 on success, else (library << 24) | (library's code & 0xffffff),
//    library = 1 NCCL, 2 cuBLAS(Lt), 3 cuDNN, 4 CUDA runtime, 5 this layer (bad argument, missing symbol);
//    Native.errorString(status) turns it into the library's own text (ncclGetErrorString, ...), and
//    Native.check(...) into an exception;
//  - outputs go into Java arrays passed in (long[] handles, int[] values, byte[] ids);
//  - device pointers, streams and handles travel as jlong (raw addresses; JCuda owns streams and memory);
//  - nothing here allocates device memory, and no handle outlives the Java object that owns it.
//
// cuDNN is opened with dlopen on first use (Note [optional cuDNN]) so that NCCL and cuBLASLt work on
// machines without cuDNN (MLPs need none of it).
#include <jni.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>
#include <nccl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace {

constexpr int LIB_NCCL = 1;
constexpr int LIB_CUBLAS = 2;
constexpr int LIB_CUDNN = 3;
constexpr int LIB_CUDART = 4;
constexpr int LIB_JNI = 5;

// Codes of this layer (LIB_JNI).
constexpr int JNI_BAD_ARGUMENT = 1;
constexpr int JNI_NO_CUDNN = 2;
constexpr int JNI_NO_ALGORITHM = 3;
constexpr int JNI_ARRAY = 4;

inline jint status(int lib, int code) { return code == 0 ? 0 : (jint)((lib << 24) | (code & 0xffffff)); }
inline jint nccl(ncclResult_t r) { return status(LIB_NCCL, (int)r); }
inline jint cublas(cublasStatus_t s) { return status(LIB_CUBLAS, (int)s); }
inline jint cudnn(cudnnStatus_t s) { return status(LIB_CUDNN, (int)s); }
inline jint cudart(cudaError_t e) { return status(LIB_CUDART, (int)e); }
inline jint jniError(int code) { return status(LIB_JNI, code); }

template <typename T>
T fromJ(jlong v) {
  return reinterpret_cast<T>(static_cast<intptr_t>(v));
}
template <typename T>
jlong toJ(T p) {
  return static_cast<jlong>(reinterpret_cast<intptr_t>(p));
}

bool putLong(JNIEnv* env, jlongArray out, jlong v) {
  if (out == nullptr || env->GetArrayLength(out) < 1) return false;
  env->SetLongArrayRegion(out, 0, 1, &v);
  return !env->ExceptionCheck();
}
bool putInt(JNIEnv* env, jintArray out, jint v) {
  if (out == nullptr || env->GetArrayLength(out) < 1) return false;
  env->SetIntArrayRegion(out, 0, 1, &v);
  return !env->ExceptionCheck();
}

// ---- Note [optional cuDNN] ----
// The cuDNN entry points this library uses, resolved from libcudnn.so.9 at first use. To bind another
// cuDNN function, add one X(...) line; callers use g_cudnn.name(...).
#define CUDNN_FUNCS(X) \
  X(cudnnCreate)       \
  X(cudnnDestroy)      \
  X(cudnnSetStream)    \
  X(cudnnGetVersion)   \
  X(cudnnGetErrorString)

struct CudnnTable {
#define DECLARE(name) decltype(&::name) name = nullptr;
  CUDNN_FUNCS(DECLARE)
#undef DECLARE
  void* lib = nullptr;
  std::string error;
  bool ok = false;
};
CudnnTable g_cudnn;
std::once_flag g_cudnnOnce;

const CudnnTable& cudnnTable() {
  std::call_once(g_cudnnOnce, [] {
    const char* names[] = {"libcudnn.so.9", "libcudnn.so"};
    for (const char* n : names) {
      g_cudnn.lib = dlopen(n, RTLD_NOW | RTLD_LOCAL);
      if (g_cudnn.lib != nullptr) break;
      const char* e = dlerror();
      g_cudnn.error += std::string(n) + ": " + (e ? e : "not found") + "; ";
    }
    if (g_cudnn.lib == nullptr) return;
#define RESOLVE(name)                                                                  \
  g_cudnn.name = reinterpret_cast<decltype(&::name)>(dlsym(g_cudnn.lib, #name));      \
  if (g_cudnn.name == nullptr) {                                                       \
    g_cudnn.error += std::string("missing symbol ") + #name + "; ";                    \
    return;                                                                            \
  }
    CUDNN_FUNCS(RESOLVE)
#undef RESOLVE
    g_cudnn.ok = true;
  });
  return g_cudnn;
}

// ---- cuBLASLt matmul ----
cudaDataType_t dataType(jint dtype) {
  // dtype codes = ordinals of dev.sparktrainer.engine.DType (FLOAT32 0, INT32 1, BFLOAT16 2)
  return dtype == 2 ? CUDA_R_16BF : CUDA_R_32F;
}

// Releases the cuBLASLt descriptors of one matmul call whatever path leaves the function.
struct MatmulDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~MatmulDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Largest power of two (<= 256) dividing a device address.
uint32_t alignment(jlong address) {
  uint32_t a = 256;
  while (a > 1 && (address % a) != 0) a >>= 1;
  return a;
}

#define TRY_CUBLAS(call)                     \
  do {                                       \
    cublasStatus_t s_ = (call);              \
    if (s_ != CUBLAS_STATUS_SUCCESS) {       \
      return cublas(s_);                     \
    }                                        \
  } while (0)

}  // namespace

extern "C" {

// ---------------------------------------------------------------- errors and versions

JNIEXPORT jstring JNICALL Java_dev_sparktrainer_cuda_Native_errorString(JNIEnv* env, jclass, jint st) {
  int lib = (st >> 24) & 0xff;
  int code = st & 0xffffff;
  std::string s;
  switch (lib) {
    case 0:
      s = "success";
      break;
    case LIB_NCCL:
      s = std::string("NCCL: ") + ncclGetErrorString((ncclResult_t)code);
      break;
    case LIB_CUBLAS:
      s = std::string("cuBLASLt: ") + cublasLtGetStatusName((cublasStatus_t)code) + " (" +
          cublasLtGetStatusString((cublasStatus_t)code) + ")";
      break;
    case LIB_CUDNN: {
      const CudnnTable& t = cudnnTable();
      s = std::string("cuDNN: ") + (t.ok ? t.cudnnGetErrorString((cudnnStatus_t)code) : "status")
          + " (" + std::to_string(code) + ")";
      break;
    }
    case LIB_CUDART:
      s = std::string("CUDA runtime: ") + cudaGetErrorName((cudaError_t)code) + " (" +
          cudaGetErrorString((cudaError_t)code) + ")";
      break;
    case LIB_JNI:
      switch (code) {
        case JNI_BAD_ARGUMENT: s = "sparktrainer_jni: bad argument"; break;
        case JNI_NO_CUDNN: s = "sparktrainer_jni: cuDNN could not be loaded: " + cudnnTable().error +
            "install cuDNN 9 for CUDA 13 (e.g. the libcudnn9-cuda-13 package) or put libcudnn.so.9 on "
            "LD_LIBRARY_PATH"; break;
        case JNI_NO_ALGORITHM: s = "cuBLASLt: no algorithm for this matmul (heuristic returned none)"; break;
        case JNI_ARRAY: s = "sparktrainer_jni: output array too small"; break;
        default: s = "sparktrainer_jni: error " + std::to_string(code);
      }
      break;
    default:
      s = "unknown status " + std::to_string(st);
  }
  return env->NewStringUTF(s.c_str());
}

// out[0] = NCCL version code, out[1] = cuBLASLt version, out[2] = CUDA runtime version (compiled against),
// out[3] = cuDNN version or -1 when cuDNN cannot be loaded.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_versions(JNIEnv* env, jclass, jlongArray out) {
  if (out == nullptr || env->GetArrayLength(out) < 4) return jniError(JNI_ARRAY);
  int ncclVersion = 0;
  ncclResult_t r = ncclGetVersion(&ncclVersion);
  if (r != ncclSuccess) return nccl(r);
  int rt = 0;
  cudaError_t e = cudaRuntimeGetVersion(&rt);
  if (e != cudaSuccess) return cudart(e);
  const CudnnTable& t = cudnnTable();
  jlong v[4] = {ncclVersion, (jlong)cublasLtGetVersion(), rt, t.ok ? (jlong)t.cudnnGetVersion() : -1};
  env->SetLongArrayRegion(out, 0, 4, v);
  return 0;
}

// ---------------------------------------------------------------- NCCL

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclGetUniqueId(JNIEnv* env, jclass, jbyteArray out) {
  if (out == nullptr || env->GetArrayLength(out) != NCCL_UNIQUE_ID_BYTES) return jniError(JNI_ARRAY);
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return nccl(r);
  env->SetByteArrayRegion(out, 0, NCCL_UNIQUE_ID_BYTES, reinterpret_cast<const jbyte*>(id.internal));
  return 0;
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclUniqueIdBytes(JNIEnv*, jclass) {
  return NCCL_UNIQUE_ID_BYTES;
}

// Non-blocking init (config.blocking = 0): may return ncclInProgress; the caller then polls
// ncclCommGetAsyncError until it is no longer in progress, and can abort on a timeout (no hang when a peer
// never arrives). Sets the CUDA device first, as NCCL uses the current one.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommInitRank(JNIEnv* env, jclass, jlongArray commOut,
                                                                          jint nranks, jbyteArray idBytes,
                                                                          jint rank, jint device) {
  if (idBytes == nullptr || env->GetArrayLength(idBytes) != NCCL_UNIQUE_ID_BYTES) return jniError(JNI_ARRAY);
  if (nranks <= 0 || rank < 0 || rank >= nranks) return jniError(JNI_BAD_ARGUMENT);
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return cudart(e);
  ncclUniqueId id;
  env->GetByteArrayRegion(idBytes, 0, NCCL_UNIQUE_ID_BYTES, reinterpret_cast<jbyte*>(id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, nranks, id, rank, &config);
  // In non-blocking mode the handle is valid (to poll or abort) even while init is in progress.
  if (!putLong(env, commOut, toJ(comm))) return jniError(JNI_ARRAY);
  return nccl(r);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommGetAsyncError(JNIEnv* env, jclass, jlong comm,
                                                                               jintArray out) {
  ncclResult_t async = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(fromJ<ncclComm_t>(comm), &async);
  if (r != ncclSuccess) return nccl(r);
  if (!putInt(env, out, (jint)async)) return jniError(JNI_ARRAY);
  return 0;
}

JNIEXPORT jstring JNICALL Java_dev_sparktrainer_cuda_Native_ncclGetLastError(JNIEnv* env, jclass, jlong comm) {
  const char* s = ncclGetLastError(fromJ<ncclComm_t>(comm));
  return env->NewStringUTF(s != nullptr ? s : "");
}

// dtype: DType ordinal (0 float32, 1 int32, 2 bfloat16). op: 0 sum, 1 prod, 2 max, 3 min, 4 avg.
static bool ncclTypes(jint dtype, jint op, ncclDataType_t* t, ncclRedOp_t* o) {
  switch (dtype) {
    case 0: *t = ncclFloat32; break;
    case 1: *t = ncclInt32; break;
    case 2: *t = ncclBfloat16; break;
    default: return false;
  }
  switch (op) {
    case 0: *o = ncclSum; break;
    case 1: *o = ncclProd; break;
    case 2: *o = ncclMax; break;
    case 3: *o = ncclMin; break;
    case 4: *o = ncclAvg; break;
    default: return false;
  }
  return true;
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclAllReduce(JNIEnv*, jclass, jlong send, jlong recv,
                                                                       jlong count, jint dtype, jint op,
                                                                       jlong comm, jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, op, &t, &o) || count < 0) return jniError(JNI_BAD_ARGUMENT);
  return nccl(ncclAllReduce(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)count, t, o,
                            fromJ<ncclComm_t>(comm), fromJ<cudaStream_t>(stream)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclBroadcast(JNIEnv*, jclass, jlong send, jlong recv,
                                                                       jlong count, jint dtype, jint root,
                                                                       jlong comm, jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, 0, &t, &o) || count < 0) return jniError(JNI_BAD_ARGUMENT);
  return nccl(ncclBroadcast(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)count, t, root,
                            fromJ<ncclComm_t>(comm), fromJ<cudaStream_t>(stream)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclReduceScatter(JNIEnv*, jclass, jlong send,
                                                                           jlong recv, jlong recvCount,
                                                                           jint dtype, jint op, jlong comm,
                                                                           jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, op, &t, &o) || recvCount < 0) return jniError(JNI_BAD_ARGUMENT);
  return nccl(ncclReduceScatter(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)recvCount, t, o,
                                fromJ<ncclComm_t>(comm), fromJ<cudaStream_t>(stream)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclAllGather(JNIEnv*, jclass, jlong send, jlong recv,
                                                                       jlong sendCount, jint dtype, jlong comm,
                                                                       jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, 0, &t, &o) || sendCount < 0) return jniError(JNI_BAD_ARGUMENT);
  return nccl(ncclAllGather(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)sendCount, t,
                            fromJ<ncclComm_t>(comm), fromJ<cudaStream_t>(stream)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclGroupStart(JNIEnv*, jclass) {
  return nccl(ncclGroupStart());
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclGroupEnd(JNIEnv*, jclass) {
  return nccl(ncclGroupEnd());
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommFinalize(JNIEnv*, jclass, jlong comm) {
  return nccl(ncclCommFinalize(fromJ<ncclComm_t>(comm)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommDestroy(JNIEnv*, jclass, jlong comm) {
  return nccl(ncclCommDestroy(fromJ<ncclComm_t>(comm)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommAbort(JNIEnv*, jclass, jlong comm) {
  return nccl(ncclCommAbort(fromJ<ncclComm_t>(comm)));
}

// ---------------------------------------------------------------- cuBLASLt

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cublasLtCreate(JNIEnv* env, jclass, jlongArray out) {
  cublasLtHandle_t h = nullptr;
  cublasStatus_t s = cublasLtCreate(&h);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas(s);
  if (!putLong(env, out, toJ(h))) {
    cublasLtDestroy(h);
    return jniError(JNI_ARRAY);
  }
  return 0;
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cublasLtDestroy(JNIEnv*, jclass, jlong h) {
  return cublas(cublasLtDestroy(fromJ<cublasLtHandle_t>(h)));
}

}  // extern "C"

namespace {

// Note [matmul plan cache]: building descriptors and asking the heuristic costs tens of microseconds per
// call, as much as a small GEMM. A plan (operation descriptor, three layouts, the chosen algorithm, or the
// status of a failed planning) is built once per shape/type/alignment/epilogue key and kept for the life of
// the thread (thread_local: one device is driven by one thread at a time, so no lock is needed and two
// ranks on two threads never share a descriptor). The bias pointer is set on the cached descriptor on every
// call; everything else in the key is fixed. Plans are never freed: a training job has a handful of shapes.
struct PlanKey {
  int device;
  int transA, transB;
  int64_t m, n, k, lda, ldb, ldc;
  int aType, bType, cType, computeMode, epilogue;
  uint32_t alignA, alignB, alignC;
  int64_t workspaceBytes;
  bool operator==(const PlanKey& o) const { return std::memcmp(this, &o, sizeof(PlanKey)) == 0; }
};
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
    size_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(PlanKey); i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  }
};
struct Plan {
  MatmulDescs d;
  cublasLtMatmulAlgo_t algo;
  jint status = 0;  // non-zero: planning failed with this status (returned again without retrying)
};

jint buildPlan(cublasLtHandle_t h, const PlanKey& key, Plan* plan) {
  MatmulDescs& d = plan->d;
  cublasComputeType_t compute = key.computeMode == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  TRY_CUBLAS(cublasLtMatmulDescCreate(&d.op, compute, CUDA_R_32F));
  cublasOperation_t opA = key.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t opB = key.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
  TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
  cublasLtEpilogue_t epi;
  switch (key.epilogue) {
    case 0: epi = CUBLASLT_EPILOGUE_DEFAULT; break;
    case 1: epi = CUBLASLT_EPILOGUE_BIAS; break;
    case 2: epi = CUBLASLT_EPILOGUE_RELU; break;
    case 3: epi = CUBLASLT_EPILOGUE_RELU_BIAS; break;
    default: return jniError(JNI_BAD_ARGUMENT);
  }
  if (key.epilogue != 0) {
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  }
  if (key.epilogue == 1 || key.epilogue == 3) {
    // The bias has C's type: fp32 bias for fp32 C (set explicitly), bf16 bias for bf16 C (the default, the
    // output type, as PyTorch's autocast linear does).
    if (key.cType != 2) {
      cudaDataType_t biasType = CUDA_R_32F;
      TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType,
                                                sizeof(biasType)));
    }
  }
  const int64_t m = key.m, n = key.n, k = key.k;
  // Stored shapes (column-major): op(A) is m x k, so A is m x k (N) or k x m (T); likewise B.
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.a, dataType(key.aType), key.transA ? k : m, key.transA ? m : k, key.lda));
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.b, dataType(key.bType), key.transB ? n : k, key.transB ? k : n, key.ldb));
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.c, dataType(key.cType), m, n, key.ldc));
  TRY_CUBLAS(cublasLtMatmulPreferenceCreate(&d.pref));
  uint64_t ws = (uint64_t)key.workspaceBytes;
  TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                  sizeof(ws)));
  // Tell the heuristic how aligned the pointers really are (views into flat buffers may be 4-byte aligned).
  TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.alignA,
                                                  sizeof(key.alignA)));
  TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.alignB,
                                                  sizeof(key.alignB)));
  TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.alignC,
                                                  sizeof(key.alignC)));
  TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.alignC,
                                                  sizeof(key.alignC)));
  cublasLtMatmulHeuristicResult_t heuristic;
  std::memset(&heuristic, 0, sizeof(heuristic));
  int found = 0;
  TRY_CUBLAS(cublasLtMatmulAlgoGetHeuristic(h, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &heuristic, &found));
  if (found == 0) return jniError(JNI_NO_ALGORITHM);
  plan->algo = heuristic.algo;
  return 0;
}

thread_local std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> t_plans;

}  // namespace

extern "C" {

// Column-major D = alpha * op(A) op(B) + beta * C with D == C (in place), as cuBLAS sees it; the Java side
// maps row-major calls onto it (C^T = op(B)^T op(A)^T). A, B: fp32 or bf16; C: fp32 or bf16; accumulation
// and scale in fp32. computeMode: 0 = fp32 (no TF32), 1 = fp32 with TF32 tensor cores allowed.
// epilogue: 0 none, 1 bias, 2 relu, 3 relu + bias; the bias (a vector of m) has C's type.
// Plans are cached per thread (Note [matmul plan cache]).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cublasLtMatmul(
    JNIEnv*, jclass, jlong handle, jboolean transA, jboolean transB, jlong m, jlong n, jlong k, jfloat alpha,
    jlong a, jlong lda, jint aType, jlong b, jlong ldb, jint bType, jfloat beta, jlong c, jlong ldc, jint cType,
    jint computeMode, jint epilogue, jlong bias, jlong workspace, jlong workspaceBytes, jlong stream) {
  if (m <= 0 || n <= 0 || k <= 0 || lda <= 0 || ldb <= 0 || ldc < m || workspaceBytes < 0 || epilogue < 0 ||
      epilogue > 3) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  if ((epilogue == 1 || epilogue == 3) && bias == 0) return jniError(JNI_BAD_ARGUMENT);
  PlanKey key;
  std::memset(&key, 0, sizeof(key));  // padding bytes take part in hashing and comparison
  int dev = 0;
  cudaError_t ce = cudaGetDevice(&dev);
  if (ce != cudaSuccess) return cudart(ce);
  key.device = dev;
  key.transA = transA ? 1 : 0;
  key.transB = transB ? 1 : 0;
  key.m = m; key.n = n; key.k = k; key.lda = lda; key.ldb = ldb; key.ldc = ldc;
  key.aType = aType; key.bType = bType; key.cType = cType; key.computeMode = computeMode; key.epilogue = epilogue;
  key.alignA = alignment(a); key.alignB = alignment(b); key.alignC = alignment(c);
  key.workspaceBytes = workspaceBytes;
  cublasLtHandle_t h = fromJ<cublasLtHandle_t>(handle);
  auto it = t_plans.find(key);
  Plan* plan;
  if (it == t_plans.end()) {
    std::unique_ptr<Plan> p(new Plan());
    p->status = buildPlan(h, key, p.get());
    plan = p.get();
    t_plans.emplace(key, std::move(p));
  } else {
    plan = it->second.get();
  }
  if (plan->status != 0) return plan->status;
  if (epilogue == 1 || epilogue == 3) {
    void* biasPtr = fromJ<void*>(bias);
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(plan->d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &biasPtr,
                                              sizeof(biasPtr)));
  }
  void* cPtr = fromJ<void*>(c);
  return cublas(cublasLtMatmul(h, plan->d.op, &alpha, fromJ<const void*>(a), plan->d.a, fromJ<const void*>(b),
                               plan->d.b, &beta, cPtr, plan->d.c, cPtr, plan->d.c, &plan->algo,
                               fromJ<void*>(workspace), (size_t)workspaceBytes, fromJ<cudaStream_t>(stream)));
}

// ---------------------------------------------------------------- cuDNN (see Note [optional cuDNN])

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnCreate(JNIEnv* env, jclass, jlongArray out) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  cudnnHandle_t h = nullptr;
  cudnnStatus_t s = t.cudnnCreate(&h);
  if (s != CUDNN_STATUS_SUCCESS) return cudnn(s);
  if (!putLong(env, out, toJ(h))) {
    t.cudnnDestroy(h);
    return jniError(JNI_ARRAY);
  }
  return 0;
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnDestroy(JNIEnv*, jclass, jlong h) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  return cudnn(t.cudnnDestroy(fromJ<cudnnHandle_t>(h)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnSetStream(JNIEnv*, jclass, jlong h, jlong stream) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  return cudnn(t.cudnnSetStream(fromJ<cudnnHandle_t>(h), fromJ<cudaStream_t>(stream)));
}

}  // extern "C"
