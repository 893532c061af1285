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

// The legacy (v7-style) convolution, pooling and batch-norm entry points are deprecated in cuDNN 9 but
// supported through 9.x; they are what this layer binds (Note [cuDNN ops]).
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

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
#include <vector>

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
constexpr int JNI_NO_CUDNN_ALGORITHM = 5;

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
#define CUDNN_FUNCS(X)                                \
  X(cudnnCreate)                                      \
  X(cudnnDestroy)                                     \
  X(cudnnSetStream)                                   \
  X(cudnnGetVersion)                                  \
  X(cudnnGetErrorString)                              \
  X(cudnnCreateTensorDescriptor)                      \
  X(cudnnDestroyTensorDescriptor)                     \
  X(cudnnSetTensor4dDescriptor)                       \
  X(cudnnCreateFilterDescriptor)                      \
  X(cudnnDestroyFilterDescriptor)                     \
  X(cudnnSetFilter4dDescriptor)                       \
  X(cudnnCreateConvolutionDescriptor)                 \
  X(cudnnDestroyConvolutionDescriptor)                \
  X(cudnnSetConvolution2dDescriptor)                  \
  X(cudnnSetConvolutionGroupCount)                    \
  X(cudnnSetConvolutionMathType)                      \
  X(cudnnGetConvolutionForwardAlgorithm_v7)           \
  X(cudnnFindConvolutionForwardAlgorithm)             \
  X(cudnnFindConvolutionBackwardDataAlgorithm)        \
  X(cudnnFindConvolutionBackwardFilterAlgorithm)      \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)      \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)    \
  X(cudnnGetConvolutionForwardWorkspaceSize)          \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)     \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize)   \
  X(cudnnConvolutionForward)                          \
  X(cudnnConvolutionBackwardData)                     \
  X(cudnnConvolutionBackwardFilter)                   \
  X(cudnnCreatePoolingDescriptor)                     \
  X(cudnnDestroyPoolingDescriptor)                    \
  X(cudnnSetPooling2dDescriptor)                      \
  X(cudnnPoolingForward)                              \
  X(cudnnPoolingBackward)                             \
  X(cudnnDeriveBNTensorDescriptor)                    \
  X(cudnnBatchNormalizationForwardTraining)           \
  X(cudnnBatchNormalizationForwardInference)          \
  X(cudnnBatchNormalizationBackward)

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
        case JNI_NO_CUDNN_ALGORITHM:
          s = "cuDNN: no convolution algorithm fits this shape within the workspace limit (deterministic "
              "algorithms only for the backward passes); raise -Dsparktrainer.cudnn.workspaceMiB";
          break;
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

// ---------------------------------------------------------------- cuDNN ops
//
// Note [cuDNN ops]: convolution (forward, backward data, backward filter), pooling and batch norm through
// cuDNN's legacy descriptor API. Tensors arrive as raw device addresses with a dtype code (FLOAT32 0,
// BFLOAT16 2; Note [dtype codes] in kernels/common.cuh) and a layout (0 NCHW, 1 NHWC; the logical dims are
// always n, c, h, w). Descriptors and the chosen algorithms are built once per shape key and cached per
// thread, like the matmul plans (one device is driven by one thread at a time; plans are never freed).
//
// Algorithm choice: cuDNN's heuristics (Get*Algorithm_v7; search 0, the default: the same algorithms every
// run) or timed trials (Find*Algorithm, search 1, as PyTorch's cudnn.benchmark: fastest first, cuDNN
// allocates its own trial buffers once per shape) rank the candidates; the first one that reports success,
// needs no more workspace than the caller's buffer and, with heuristics, for the two backward passes, is
// deterministic (so a run repeats bit for bit) is used. Timed search takes the fastest, deterministic or not,
// as PyTorch does with cudnn.benchmark and cudnn.deterministic off: a ResNet-50 step spent 58% of its time in
// the deterministic backward-data algorithms on an H100 (bf16, NCHW; op profile of 2026-11-26). Ranks still
// end every step with identical parameters (the all-reduce), but two runs may differ in the last bits. The workspace each candidate needs is asked
// once and kept (cuDNN 9 builds an execution plan to answer, which costs as much as a small convolution). If running it fails as unsupported, the next
// candidate is tried and remembered. Math: computeMode 0 = fp32 FMA only (no TF32: results match the CPU
// engine to rounding), 1 = TF32 tensor cores allowed, 2 = bf16 tensor cores (fp32 accumulation).
namespace {

#define TRY_CUDNN(call)                          \
  do {                                           \
    cudnnStatus_t s_ = (call);                   \
    if (s_ != CUDNN_STATUS_SUCCESS) {            \
      return cudnn(s_);                          \
    }                                            \
  } while (0)

cudnnDataType_t dnnType(jint dtype) { return dtype == 2 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT; }
cudnnTensorFormat_t dnnFormat(jint layout) { return layout == 1 ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW; }

// Owns the descriptors of one cached plan (destroyed with the thread's cache).
struct DnnDescs {
  std::vector<cudnnTensorDescriptor_t> tensors;
  cudnnFilterDescriptor_t filter = nullptr;
  cudnnConvolutionDescriptor_t conv[3] = {nullptr, nullptr, nullptr};
  cudnnPoolingDescriptor_t pool = nullptr;
  ~DnnDescs() {
    const CudnnTable& t = g_cudnn;
    if (!t.ok) return;
    for (auto d : tensors) t.cudnnDestroyTensorDescriptor(d);
    if (filter) t.cudnnDestroyFilterDescriptor(filter);
    for (auto c : conv) if (c) t.cudnnDestroyConvolutionDescriptor(c);
    if (pool) t.cudnnDestroyPoolingDescriptor(pool);
  }
  cudnnStatus_t tensor(cudnnTensorDescriptor_t* out, jint layout, jint dtype, int n, int c, int h, int w) {
    const CudnnTable& t = g_cudnn;
    cudnnStatus_t s = t.cudnnCreateTensorDescriptor(out);
    if (s != CUDNN_STATUS_SUCCESS) return s;
    tensors.push_back(*out);
    return t.cudnnSetTensor4dDescriptor(*out, dnnFormat(layout), dnnType(dtype), n, c, h, w);
  }
};

// The integer key of a plan: kind, device, dtype, layout, the dims, the geometry and the limits.
struct DnnKey {
  int v[24];
  bool operator==(const DnnKey& o) const { return std::memcmp(v, o.v, sizeof(v)) == 0; }
};
// Zeroes a key (padding takes part in hashing) and fills its common head: kind (1 convolution, 2 pooling,
// 3 batch norm), the current device, dtype and layout. The caller adds its own fields from v[4] on.
jint dnnKey(int kind, jint dtype, jint layout, DnnKey* key) {
  std::memset(key, 0, sizeof(*key));
  int dev = 0;
  cudaError_t ce = cudaGetDevice(&dev);
  if (ce != cudaSuccess) return cudart(ce);
  key->v[0] = kind;
  key->v[1] = dev;
  key->v[2] = dtype;
  key->v[3] = layout;
  return 0;
}

struct DnnKeyHash {
  size_t operator()(const DnnKey& k) const {
    size_t h = 1469598103934665603ull;
    for (int x : k.v) h = (h ^ (uint32_t)x) * 1099511628211ull;
    return h;
  }
};

// Conv dims (from Java's int[]): n, c, h, w, k, kh, kw, padH, padW, strideH, strideW, dilationH, dilationW,
// groups, oh, ow.
constexpr int CONV_DIMS = 16;

struct ConvPlan {
  DnnDescs d;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  jint status = 0;  // non-zero: building the descriptors failed with this status
  // Per direction (0 forward, 1 backward data, 2 backward filter): candidate algorithms in heuristic order
  // (filtered), the index in use, whether it has run successfully once.
  std::vector<int> algos[3];
  std::vector<cudnnMathType_t> maths[3];
  std::vector<size_t> needs[3];  // workspace bytes of each candidate, SIZE_MAX until asked
  size_t next[3] = {0, 0, 0};
  bool ranked[3] = {false, false, false};
};

thread_local std::unordered_map<DnnKey, std::unique_ptr<ConvPlan>, DnnKeyHash> t_convPlans;

jint buildConv(ConvPlan* p, jint dtype, jint layout, const int* d, jint computeMode) {
  const CudnnTable& t = g_cudnn;
  TRY_CUDNN(p->d.tensor(&p->x, layout, dtype, d[0], d[1], d[2], d[3]));
  TRY_CUDNN(p->d.tensor(&p->y, layout, dtype, d[0], d[4], d[14], d[15]));
  TRY_CUDNN(t.cudnnCreateFilterDescriptor(&p->d.filter));
  TRY_CUDNN(t.cudnnSetFilter4dDescriptor(p->d.filter, dnnType(dtype), dnnFormat(layout), d[4], d[1] / d[13], d[5],
                                         d[6]));
  for (int dir = 0; dir < 3; dir++) {
    TRY_CUDNN(t.cudnnCreateConvolutionDescriptor(&p->d.conv[dir]));
    TRY_CUDNN(t.cudnnSetConvolution2dDescriptor(p->d.conv[dir], d[7], d[8], d[9], d[10], d[11], d[12],
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    TRY_CUDNN(t.cudnnSetConvolutionGroupCount(p->d.conv[dir], d[13]));
    cudnnMathType_t math = computeMode == 0 ? CUDNN_FMA_MATH
                           : computeMode == 1 ? CUDNN_DEFAULT_MATH
                                              : CUDNN_TENSOR_OP_MATH;
    TRY_CUDNN(t.cudnnSetConvolutionMathType(p->d.conv[dir], math));
  }
  return 0;
}

// Ranks the candidate algorithms of one direction (see Note [cuDNN ops]).
jint rankConv(cudnnHandle_t h, ConvPlan* p, int dir, jint computeMode, size_t wsBytes, jint search) {
  const CudnnTable& t = g_cudnn;
  constexpr int MAX = 16;
  int found = 0;
  p->algos[dir].clear();
  p->maths[dir].clear();
  auto accept = [&](int algo, cudnnStatus_t st, size_t memory, cudnnDeterminism_t det, cudnnMathType_t math,
                    bool needDeterministic) {
    if (st != CUDNN_STATUS_SUCCESS || memory > wsBytes) return;
    if (needDeterministic && det != CUDNN_DETERMINISTIC) return;
    if (computeMode == 0 && math != CUDNN_FMA_MATH && math != CUDNN_DEFAULT_MATH) return;
    p->algos[dir].push_back(algo);
    p->maths[dir].push_back(computeMode == 0 ? CUDNN_FMA_MATH : math);
  };
  if (dir == 0) {
    cudnnConvolutionFwdAlgoPerf_t perf[MAX];
    if (search == 1) {
      TRY_CUDNN(t.cudnnFindConvolutionForwardAlgorithm(h, p->x, p->d.filter, p->d.conv[0], p->y, MAX, &found, perf));
    } else {
      TRY_CUDNN(t.cudnnGetConvolutionForwardAlgorithm_v7(h, p->x, p->d.filter, p->d.conv[0], p->y, MAX, &found, perf));
    }
    for (int i = 0; i < found; i++) {
      accept((int)perf[i].algo, perf[i].status, perf[i].memory, perf[i].determinism, perf[i].mathType, false);
    }
  } else if (dir == 1) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[MAX];
    if (search == 1) {
      TRY_CUDNN(t.cudnnFindConvolutionBackwardDataAlgorithm(h, p->d.filter, p->y, p->d.conv[1], p->x, MAX, &found,
                                                            perf));
    } else {
      TRY_CUDNN(t.cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->d.filter, p->y, p->d.conv[1], p->x, MAX, &found,
                                                              perf));
    }
    for (int i = 0; i < found; i++) {
      accept((int)perf[i].algo, perf[i].status, perf[i].memory, perf[i].determinism, perf[i].mathType,
             search == 0);
    }
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX];
    if (search == 1) {
      TRY_CUDNN(t.cudnnFindConvolutionBackwardFilterAlgorithm(h, p->x, p->y, p->d.conv[2], p->d.filter, MAX, &found,
                                                              perf));
    } else {
      TRY_CUDNN(t.cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x, p->y, p->d.conv[2], p->d.filter, MAX,
                                                                &found, perf));
    }
    for (int i = 0; i < found; i++) {
      accept((int)perf[i].algo, perf[i].status, perf[i].memory, perf[i].determinism, perf[i].mathType,
             search == 0);
    }
  }
  p->needs[dir].assign(p->algos[dir].size(), SIZE_MAX);
  p->ranked[dir] = true;
  return 0;
}

bool readInts(JNIEnv* env, jintArray a, int* out, int n) {
  if (a == nullptr || env->GetArrayLength(a) != n) return false;
  env->GetIntArrayRegion(a, 0, n, out);
  return !env->ExceptionCheck();
}

// Runs one convolution direction: dir 0 y = conv(x, w) (a = x, b = w, c = y), dir 1 dx = convT(dy, w)
// (a = dy, b = w, c = dx), dir 2 dw = dconv(x, dy) (a = x, b = dy, c = dw); c = alpha * result + beta * c.
jint runConv(JNIEnv* env, jlong handle, jint dtype, jint layout, jintArray dimsArray, jint computeMode, jint search,
             int dir, jlong a, jlong b, jlong c, jfloat beta, jlong workspace, jlong wsBytes) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  int d[CONV_DIMS];
  if (!readInts(env, dimsArray, d, CONV_DIMS)) return jniError(JNI_BAD_ARGUMENT);
  if ((dtype != 0 && dtype != 2) || (layout != 0 && layout != 1) || computeMode < 0 || computeMode > 2 ||
      (search != 0 && search != 1) || wsBytes < 0 || d[13] <= 0 || d[1] % d[13] != 0 || d[4] % d[13] != 0) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  DnnKey key;
  jint kst = dnnKey(1, dtype, layout, &key);  // kind: convolution
  if (kst != 0) return kst;
  key.v[4] = computeMode;
  key.v[5] = (int)(wsBytes >> 20);
  key.v[22] = search;
  for (int i = 0; i < CONV_DIMS; i++) key.v[6 + i] = d[i];
  auto it = t_convPlans.find(key);
  ConvPlan* p;
  if (it == t_convPlans.end()) {
    std::unique_ptr<ConvPlan> np(new ConvPlan());
    np->status = buildConv(np.get(), dtype, layout, d, computeMode);
    p = np.get();
    t_convPlans.emplace(key, std::move(np));
  } else {
    p = it->second.get();
  }
  if (p->status != 0) return p->status;
  cudnnHandle_t h = fromJ<cudnnHandle_t>(handle);
  if (!p->ranked[dir]) {
    jint st = rankConv(h, p, dir, computeMode, (size_t)wsBytes, search);
    if (st != 0) return st;
  }
  const float alpha = 1.0f;
  while (p->next[dir] < p->algos[dir].size()) {
    size_t i = p->next[dir];
    TRY_CUDNN(t.cudnnSetConvolutionMathType(p->d.conv[dir], p->maths[dir][i]));
    cudnnStatus_t s;
    const bool known = p->needs[dir][i] != SIZE_MAX;
    size_t need = known ? p->needs[dir][i] : 0;
    void* ws = fromJ<void*>(workspace);
    if (dir == 0) {
      auto algo = (cudnnConvolutionFwdAlgo_t)p->algos[dir][i];
      s = known ? CUDNN_STATUS_SUCCESS
                : t.cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->d.filter, p->d.conv[0], p->y, algo, &need);
      if (s == CUDNN_STATUS_SUCCESS && need <= (size_t)wsBytes) {
        s = t.cudnnConvolutionForward(h, &alpha, p->x, fromJ<const void*>(a), p->d.filter, fromJ<const void*>(b),
                                      p->d.conv[0], algo, ws, (size_t)wsBytes, &beta, p->y, fromJ<void*>(c));
      }
    } else if (dir == 1) {
      auto algo = (cudnnConvolutionBwdDataAlgo_t)p->algos[dir][i];
      s = known ? CUDNN_STATUS_SUCCESS
                : t.cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->d.filter, p->y, p->d.conv[1], p->x, algo, &need);
      if (s == CUDNN_STATUS_SUCCESS && need <= (size_t)wsBytes) {
        s = t.cudnnConvolutionBackwardData(h, &alpha, p->d.filter, fromJ<const void*>(b), p->y,
                                           fromJ<const void*>(a), p->d.conv[1], algo, ws, (size_t)wsBytes, &beta,
                                           p->x, fromJ<void*>(c));
      }
    } else {
      auto algo = (cudnnConvolutionBwdFilterAlgo_t)p->algos[dir][i];
      s = known ? CUDNN_STATUS_SUCCESS
                : t.cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x, p->y, p->d.conv[2], p->d.filter, algo,
                                                                   &need);
      if (s == CUDNN_STATUS_SUCCESS && need <= (size_t)wsBytes) {
        s = t.cudnnConvolutionBackwardFilter(h, &alpha, p->x, fromJ<const void*>(a), p->y, fromJ<const void*>(b),
                                             p->d.conv[2], algo, ws, (size_t)wsBytes, &beta, p->d.filter,
                                             fromJ<void*>(c));
      }
    }
    if (s == CUDNN_STATUS_SUCCESS && need <= (size_t)wsBytes) {
      p->needs[dir][i] = need;
      return 0;
    }
    if (s != CUDNN_STATUS_SUCCESS && s != CUDNN_STATUS_NOT_SUPPORTED && s != CUDNN_STATUS_BAD_PARAM &&
        s != CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH) {
      return cudnn(s);  // a real failure (e.g. execution failed): report it, keep the algorithm
    }
    p->next[dir]++;  // this algorithm cannot run this shape after all: try the next one
  }
  return jniError(JNI_NO_CUDNN_ALGORITHM);
}

// Pool dims: n, c, h, w, kh, kw, padH, padW, strideH, strideW, oh, ow. mode: 0 max, 1 average including
// padding (PyTorch's count_include_pad=True).
constexpr int POOL_DIMS = 12;

struct PoolPlan {
  DnnDescs d;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  jint status = 0;
};
thread_local std::unordered_map<DnnKey, std::unique_ptr<PoolPlan>, DnnKeyHash> t_poolPlans;

jint buildPool(PoolPlan* p, jint dtype, jint layout, jint mode, const int* d) {
  const CudnnTable& t = g_cudnn;
  TRY_CUDNN(p->d.tensor(&p->x, layout, dtype, d[0], d[1], d[2], d[3]));
  TRY_CUDNN(p->d.tensor(&p->y, layout, dtype, d[0], d[1], d[10], d[11]));
  TRY_CUDNN(t.cudnnCreatePoolingDescriptor(&p->d.pool));
  cudnnPoolingMode_t m = mode == 0 ? CUDNN_POOLING_MAX_DETERMINISTIC : CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
  TRY_CUDNN(t.cudnnSetPooling2dDescriptor(p->d.pool, m, CUDNN_NOT_PROPAGATE_NAN, d[4], d[5], d[6], d[7], d[8], d[9]));
  return 0;
}

jint poolPlan(JNIEnv* env, jint dtype, jint layout, jint mode, jintArray dimsArray, PoolPlan** out) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  int d[POOL_DIMS];
  if (!readInts(env, dimsArray, d, POOL_DIMS)) return jniError(JNI_BAD_ARGUMENT);
  if ((dtype != 0 && dtype != 2) || (layout != 0 && layout != 1) || (mode != 0 && mode != 1)) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  DnnKey key;
  jint kst = dnnKey(2, dtype, layout, &key);  // kind: pooling
  if (kst != 0) return kst;
  key.v[4] = mode;
  for (int i = 0; i < POOL_DIMS; i++) key.v[6 + i] = d[i];
  auto it = t_poolPlans.find(key);
  if (it == t_poolPlans.end()) {
    std::unique_ptr<PoolPlan> np(new PoolPlan());
    np->status = buildPool(np.get(), dtype, layout, mode, d);
    *out = np.get();
    t_poolPlans.emplace(key, std::move(np));
  } else {
    *out = it->second.get();
  }
  return (*out)->status;
}

// Batch norm: x (n, c, h, w) in dtype/layout, per-channel parameters and statistics fp32 (c).
struct BnPlan {
  DnnDescs d;
  cudnnTensorDescriptor_t x = nullptr, bn = nullptr;
  jint status = 0;
  // Training mode: the persistent spatial kernels for NHWC (what PyTorch picks for channels_last), else the
  // plain spatial ones. Inference always uses CUDNN_BATCHNORM_SPATIAL.
  cudnnBatchNormMode_t trainMode = CUDNN_BATCHNORM_SPATIAL;
};
thread_local std::unordered_map<DnnKey, std::unique_ptr<BnPlan>, DnnKeyHash> t_bnPlans;

jint bnPlan(jint dtype, jint layout, jint n, jint c, jint h, jint w, BnPlan** out) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  if ((dtype != 0 && dtype != 2) || (layout != 0 && layout != 1) || n <= 0 || c <= 0 || h <= 0 || w <= 0) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  DnnKey key;
  jint kst = dnnKey(3, dtype, layout, &key);  // kind: batch norm
  if (kst != 0) return kst;
  key.v[6] = n;
  key.v[7] = c;
  key.v[8] = h;
  key.v[9] = w;
  auto it = t_bnPlans.find(key);
  if (it != t_bnPlans.end()) {
    *out = it->second.get();
    return (*out)->status;
  }
  std::unique_ptr<BnPlan> np(new BnPlan());
  BnPlan* p = np.get();
  p->trainMode = layout == 1 ? CUDNN_BATCHNORM_SPATIAL_PERSISTENT : CUDNN_BATCHNORM_SPATIAL;
  *out = p;
  t_bnPlans.emplace(key, std::move(np));
  cudnnStatus_t s = p->d.tensor(&p->x, layout, dtype, n, c, h, w);
  if (s == CUDNN_STATUS_SUCCESS) {
    s = t.cudnnCreateTensorDescriptor(&p->bn);
    if (s == CUDNN_STATUS_SUCCESS) {
      p->d.tensors.push_back(p->bn);
      s = t.cudnnDeriveBNTensorDescriptor(p->bn, p->x, CUDNN_BATCHNORM_SPATIAL);
    }
  }
  p->status = cudnn(s);
  return p->status;
}

}  // namespace

extern "C" {

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnConvForward(JNIEnv* env, jclass, jlong handle,
    jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong x, jlong w, jlong y, jfloat beta,
    jlong workspace, jlong wsBytes) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 0, x, w, y, beta, workspace, wsBytes);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnConvBackwardData(JNIEnv* env, jclass, jlong handle,
    jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong dy, jlong w, jlong dx, jfloat beta,
    jlong workspace, jlong wsBytes) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 1, dy, w, dx, beta, workspace, wsBytes);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnConvBackwardFilter(JNIEnv* env, jclass,
    jlong handle, jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong x, jlong dy, jlong dw,
    jfloat beta, jlong workspace, jlong wsBytes) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 2, x, dy, dw, beta, workspace, wsBytes);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnPoolForward(JNIEnv* env, jclass, jlong handle,
    jint dtype, jint layout, jint mode, jintArray dims, jlong x, jlong y) {
  PoolPlan* p = nullptr;
  jint st = poolPlan(env, dtype, layout, mode, dims, &p);
  if (st != 0) return st;
  const float alpha = 1.0f, beta = 0.0f;
  return cudnn(g_cudnn.cudnnPoolingForward(fromJ<cudnnHandle_t>(handle), p->d.pool, &alpha, p->x,
                                           fromJ<const void*>(x), &beta, p->y, fromJ<void*>(y)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnPoolBackward(JNIEnv* env, jclass, jlong handle,
    jint dtype, jint layout, jint mode, jintArray dims, jlong y, jlong dy, jlong x, jlong dx) {
  PoolPlan* p = nullptr;
  jint st = poolPlan(env, dtype, layout, mode, dims, &p);
  if (st != 0) return st;
  const float alpha = 1.0f, beta = 0.0f;
  return cudnn(g_cudnn.cudnnPoolingBackward(fromJ<cudnnHandle_t>(handle), p->d.pool, &alpha, p->y,
                                            fromJ<const void*>(y), p->y, fromJ<const void*>(dy), p->x,
                                            fromJ<const void*>(x), &beta, p->x, fromJ<void*>(dx)));
}

// Training-mode forward: y, running statistics (factor = momentum; cuDNN keeps the unbiased variance),
// saveMean and saveInvStd (1 / sqrt(var + eps)) for the backward. eps >= CUDNN_BN_MIN_EPSILON.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnBnForwardTraining(JNIEnv*, jclass, jlong handle,
    jint dtype, jint layout, jint n, jint c, jint h, jint w, jlong x, jlong y, jlong gamma, jlong beta,
    jdouble factor, jlong runningMean, jlong runningVar, jdouble eps, jlong saveMean, jlong saveInvStd) {
  BnPlan* p = nullptr;
  jint st = bnPlan(dtype, layout, n, c, h, w, &p);
  if (st != 0) return st;
  if (eps < CUDNN_BN_MIN_EPSILON) return jniError(JNI_BAD_ARGUMENT);
  const float one = 1.0f, zero = 0.0f;
  return cudnn(g_cudnn.cudnnBatchNormalizationForwardTraining(
      fromJ<cudnnHandle_t>(handle), p->trainMode, &one, &zero, p->x, fromJ<const void*>(x), p->x,
      fromJ<void*>(y), p->bn, fromJ<const void*>(gamma), fromJ<const void*>(beta), factor, fromJ<void*>(runningMean),
      fromJ<void*>(runningVar), eps, fromJ<void*>(saveMean), fromJ<void*>(saveInvStd)));
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnBnForwardInference(JNIEnv*, jclass, jlong handle,
    jint dtype, jint layout, jint n, jint c, jint h, jint w, jlong x, jlong y, jlong gamma, jlong beta,
    jlong runningMean, jlong runningVar, jdouble eps) {
  BnPlan* p = nullptr;
  jint st = bnPlan(dtype, layout, n, c, h, w, &p);
  if (st != 0) return st;
  if (eps < CUDNN_BN_MIN_EPSILON) return jniError(JNI_BAD_ARGUMENT);
  const float one = 1.0f, zero = 0.0f;
  return cudnn(g_cudnn.cudnnBatchNormalizationForwardInference(
      fromJ<cudnnHandle_t>(handle), CUDNN_BATCHNORM_SPATIAL, &one, &zero, p->x, fromJ<const void*>(x), p->x,
      fromJ<void*>(y), p->bn, fromJ<const void*>(gamma), fromJ<const void*>(beta), fromJ<const void*>(runningMean),
      fromJ<const void*>(runningVar), eps));
}

// Backward with the saved statistics: dx overwritten; dgamma and dbeta accumulated (+=).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnBnBackward(JNIEnv*, jclass, jlong handle,
    jint dtype, jint layout, jint n, jint c, jint h, jint w, jlong x, jlong dy, jlong dx, jlong gamma,
    jlong dgamma, jlong dbeta, jdouble eps, jlong saveMean, jlong saveInvStd) {
  BnPlan* p = nullptr;
  jint st = bnPlan(dtype, layout, n, c, h, w, &p);
  if (st != 0) return st;
  if (eps < CUDNN_BN_MIN_EPSILON) return jniError(JNI_BAD_ARGUMENT);
  const float one = 1.0f, zero = 0.0f;
  return cudnn(g_cudnn.cudnnBatchNormalizationBackward(
      fromJ<cudnnHandle_t>(handle), p->trainMode, &one, &zero, &one, &one, p->x, fromJ<const void*>(x),
      p->x, fromJ<const void*>(dy), p->x, fromJ<void*>(dx), p->bn, fromJ<const void*>(gamma), fromJ<void*>(dgamma),
      fromJ<void*>(dbeta), eps, fromJ<const void*>(saveMean), fromJ<const void*>(saveInvStd)));
}

}  // extern "C"
