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

// The legacy (v7-style) convolution and batch-norm inference entry points are deprecated in cuDNN 9 but
// supported through 9.x; they are what this layer binds (Note [cuDNN ops]). The convolutions also have a
// second implementation on cuDNN 9's backend (graph) API (Note [cuDNN graph convolutions]).
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
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
constexpr int JNI_NO_CUDNN_ENGINE = 6;
// A convolution ran nothing and asks for a workspace (Note [cuDNN workspace] in CudaDevice): its chosen algorithm
// needs more than the caller's buffer (7), or timing the candidates does (8); the bytes come back in need[0].
constexpr int JNI_CUDNN_WORKSPACE = 7;
constexpr int JNI_CUDNN_TRIAL_WORKSPACE = 8;
// A matmul ran nothing: its cached algorithm needs more workspace than the caller's buffer; the bytes come back in
// need[0] (Note [cuBLASLt workspace] in BlasLt).
constexpr int JNI_CUBLASLT_WORKSPACE = 9;

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
  X(cudnnGetStream)                                   \
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
  X(cudnnDeriveBNTensorDescriptor)                    \
  X(cudnnBatchNormalizationForwardInference)          \
  X(cudnnBackendCreateDescriptor)                     \
  X(cudnnBackendDestroyDescriptor)                    \
  X(cudnnBackendSetAttribute)                         \
  X(cudnnBackendGetAttribute)                         \
  X(cudnnBackendFinalize)                             \
  X(cudnnBackendExecute)

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
        case JNI_NO_CUDNN_ENGINE:
          s = "cuDNN graph API: no engine runs this convolution within the workspace limit and the numerical "
              "rules of Note [cuDNN graph convolutions] (the caller falls back to the legacy API)";
          break;
        case JNI_CUDNN_WORKSPACE:
          s = "cuDNN: the chosen convolution algorithm needs a larger workspace than the buffer given (nothing ran; "
              "the caller grows its buffer and calls again)";
          break;
        case JNI_CUDNN_TRIAL_WORKSPACE:
          s = "cuDNN graph API: timing the candidate engines needs a larger workspace than the buffer given (nothing "
              "ran; the caller lends a trial buffer and calls again)";
          break;
        case JNI_CUBLASLT_WORKSPACE:
          s = "cuBLASLt: the chosen matmul algorithm needs a larger workspace than the buffer given (nothing ran; "
              "the caller grows its buffer and calls again)";
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

// Note [NCCL handle cells]: a non-blocking init or split returns at once while a thread of NCCL's finishes the
// job, and that thread stores the new communicator through the ncclComm_t* it was given when it is done. So that
// pointer cannot be a local of the JNI call: by then the frame is part of the Java thread's stack again (the
// late store corrupted an interpreter frame: a JVM crash, SIGSEGV in InterpreterRuntime::note_trap, on 2x H100).
// It is a heap cell instead (out[1]), which the caller frees with ncclTakeComm once NCCL reports the job done
// (ncclCommGetAsyncError no longer in progress). After a failed or aborted job the cell is left to NCCL (8 bytes):
// its thread may still store into it.
static bool putComm(JNIEnv* env, jlongArray out, ncclComm_t now, ncclComm_t* cell) {
  if (out == nullptr || env->GetArrayLength(out) != 2) return false;
  jlong v[2] = {toJ(now), toJ(cell)};
  env->SetLongArrayRegion(out, 0, 2, v);
  return !env->ExceptionCheck();
}

JNIEXPORT jlong JNICALL Java_dev_sparktrainer_cuda_Native_ncclTakeComm(JNIEnv*, jclass, jlong cell) {
  ncclComm_t* c = fromJ<ncclComm_t*>(cell);
  if (c == nullptr) return 0;
  ncclComm_t comm = *c;
  delete c;
  return toJ(comm);
}

// Non-blocking init (config.blocking = 0): may return ncclInProgress; the caller then polls
// ncclCommGetAsyncError until it is no longer in progress, and can abort on a timeout (no hang when a peer
// never arrives). Sets the CUDA device first, as NCCL uses the current one. commOut: {comm, cell} (Note [NCCL
// handle cells]); the comm is valid to poll or abort at once.
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
  ncclComm_t* cell = new (std::nothrow) ncclComm_t(nullptr);
  if (cell == nullptr) return jniError(JNI_BAD_ARGUMENT);
  ncclResult_t r = ncclCommInitRankConfig(cell, nranks, id, rank, &config);
  // In non-blocking mode the handle is valid (to poll or abort) even while init is in progress.
  if (!putComm(env, commOut, *cell, cell)) return jniError(JNI_ARRAY);
  return nccl(r);
}

// ncclCommSplit of a non-blocking parent (color 0, key = rank: the same ranks, in order) into a child
// communicator that is blocking when blocking != 0. The split itself follows the parent's mode (NCCL takes the
// parent's config for the group it runs in), so it may return ncclInProgress: the caller polls the child with
// ncclCommGetAsyncError under its timeout, and aborting the parent also aborts the child's init (NCCL links
// their abort flags while it runs). Note [blocking collectives] in NcclCommunicator.java says why. commOut:
// {child now (may still be null), cell} (Note [NCCL handle cells]): the child is in the cell once the parent
// reports the split done.
// ctaPolicy: -1 leaves NCCL's default; else config.CTAPolicy (2 = NCCL_CTA_POLICY_ZERO: Note [copy-engine
// collectives] in NcclCommunicator.java).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommSplit(JNIEnv* env, jclass, jlong parent, jint key,
                                                                       jint blocking, jint ctaPolicy,
                                                                       jlongArray commOut) {
  if (parent == 0 || key < 0 || ctaPolicy < -1) return jniError(JNI_BAD_ARGUMENT);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = blocking != 0 ? 1 : 0;
  if (ctaPolicy >= 0) {
#if NCCL_VERSION_CODE >= 22700
    config.CTAPolicy = ctaPolicy;
#else
    return jniError(JNI_BAD_ARGUMENT);
#endif
  }
  ncclComm_t* cell = new (std::nothrow) ncclComm_t(nullptr);
  if (cell == nullptr) return jniError(JNI_BAD_ARGUMENT);
  ncclResult_t r = ncclCommSplit(fromJ<ncclComm_t>(parent), 0, key, cell, &config);
  if (!putComm(env, commOut, *cell, cell)) return jniError(JNI_ARRAY);
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

// count elements to each rank from sendbuff's chunk r, count from each rank into recvbuff's chunk r (NCCL 2.28+).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclAlltoAll(JNIEnv*, jclass, jlong send, jlong recv,
                                                                      jlong count, jint dtype, jlong comm,
                                                                      jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, 0, &t, &o) || count < 0) return jniError(JNI_BAD_ARGUMENT);
#if NCCL_VERSION_CODE >= 22800
  return nccl(ncclAlltoAll(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)count, t, fromJ<ncclComm_t>(comm),
                           fromJ<cudaStream_t>(stream)));
#else
  return nccl(ncclInvalidUsage);
#endif
}

// count elements from every rank's sendbuff into root's recvbuff chunk r (NCCL 2.28+); in place on root when
// sendbuff == recvbuff + root * count.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclGather(JNIEnv*, jclass, jlong send, jlong recv,
                                                                    jlong count, jint dtype, jint root, jlong comm,
                                                                    jlong stream) {
  ncclDataType_t t;
  ncclRedOp_t o;
  if (!ncclTypes(dtype, 0, &t, &o) || count < 0 || root < 0) return jniError(JNI_BAD_ARGUMENT);
#if NCCL_VERSION_CODE >= 22800
  return nccl(ncclGather(fromJ<const void*>(send), fromJ<void*>(recv), (size_t)count, t, (int)root,
                         fromJ<ncclComm_t>(comm), fromJ<cudaStream_t>(stream)));
#else
  return nccl(ncclInvalidUsage);
#endif
}

// Note [copy-engine collectives] (NcclCommunicator.java): memory that NCCL can register as a symmetric window
// (cuMem, exportable), in the current device's context; out[0] = the address.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclMemAlloc(JNIEnv* env, jclass, jlong bytes,
                                                                      jlongArray out) {
  if (bytes <= 0) return jniError(JNI_BAD_ARGUMENT);
#if NCCL_VERSION_CODE >= 21900
  void* p = nullptr;
  ncclResult_t r = ncclMemAlloc(&p, (size_t)bytes);
  if (r != ncclSuccess) return nccl(r);
  if (!putLong(env, out, toJ(p))) {
    ncclMemFree(p);
    return jniError(JNI_ARRAY);
  }
  return 0;
#else
  return nccl(ncclInvalidUsage);
#endif
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclMemFree(JNIEnv*, jclass, jlong address) {
#if NCCL_VERSION_CODE >= 21900
  return nccl(ncclMemFree(fromJ<void*>(address)));
#else
  return nccl(ncclInvalidUsage);
#endif
}

// The NCCL_VERSION_CODE of the headers this library was compiled against (the runtime's is in versions()).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCompiledVersion(JNIEnv*, jclass) {
  return NCCL_VERSION_CODE;
}

// ncclCommWindowRegister(comm, buff, bytes, &win, NCCL_WIN_COLL_SYMMETRIC), a collective of the communicator's
// ranks (each registers the same-sized buffer); out[0] = the window (NCCL 2.27+).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommWindowRegister(JNIEnv* env, jclass, jlong comm,
                                                                                jlong address, jlong bytes,
                                                                                jlongArray out) {
  if (comm == 0 || address == 0 || bytes <= 0) return jniError(JNI_BAD_ARGUMENT);
  // checked before the registration, a collective: a rank must not register and then deregister alone
  if (out == nullptr || env->GetArrayLength(out) < 1) return jniError(JNI_ARRAY);
#if NCCL_VERSION_CODE >= 22700
  ncclWindow_t win = nullptr;
  ncclResult_t r = ncclCommWindowRegister(fromJ<ncclComm_t>(comm), fromJ<void*>(address), (size_t)bytes, &win,
                                          NCCL_WIN_COLL_SYMMETRIC);
  if (r != ncclSuccess) return nccl(r);
  return putLong(env, out, toJ(win)) ? 0 : jniError(JNI_ARRAY);
#else
  return nccl(ncclInvalidUsage);
#endif
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_ncclCommWindowDeregister(JNIEnv*, jclass, jlong comm,
                                                                                  jlong win) {
  if (comm == 0 || win == 0) return jniError(JNI_BAD_ARGUMENT);
#if NCCL_VERSION_CODE >= 22700
  return nccl(ncclCommWindowDeregister(fromJ<ncclComm_t>(comm), fromJ<ncclWindow_t>(win)));
#else
  return nccl(ncclInvalidUsage);
#endif
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
// The workspace (Note [cuBLASLt workspace] in BlasLt): the heuristic chooses among the algorithms that need at most
// limitBytes (part of the key); the plan keeps what the chosen one needs (the heuristic result's workspaceSize). The
// caller's buffer may be smaller: then the call runs nothing and returns JNI_CUBLASLT_WORKSPACE with the bytes in
// need[0]; on success need[0] holds the bytes the algorithm that ran needs. So the choice, and the bits, do not
// depend on the buffer.
struct PlanKey {
  int device;
  int transA, transB;
  int64_t m, n, k, lda, ldb, ldc;
  int aType, bType, cType, computeMode, epilogue;
  int64_t auxLd;  // GELU's input's leading dimension in elements (epilogues 4 and 5), else 0
  uint32_t alignA, alignB, alignC;
  int64_t limitBytes;  // the workspace the heuristic may choose for (not the buffer's size)
  int smCountTarget;   // 0: all SMs; else CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET (Note [GEMM SM carve-out])
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
  size_t workspaceNeed = 0;  // the workspace algo needs (the heuristic's workspaceSize), at most key.limitBytes
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
    case 4: epi = CUBLASLT_EPILOGUE_GELU_AUX_BIAS; break;  // Note [fused GELU] in nn.Linear
    case 5: epi = CUBLASLT_EPILOGUE_GELU_AUX; break;
    default: return jniError(JNI_BAD_ARGUMENT);
  }
  if (key.epilogue != 0) {
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  }
  if (key.smCountTarget > 0) {  // Note [GEMM SM carve-out] in CudaDevice: the heuristic and the grid see fewer SMs
    int32_t sms = key.smCountTarget;
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sms, sizeof(sms)));
  }
  if (key.epilogue == 1 || key.epilogue == 3 || key.epilogue == 4) {
    // The bias has C's type: fp32 bias for fp32 C (set explicitly), bf16 bias for bf16 C (the default, the
    // output type, as PyTorch's autocast linear does).
    if (key.cType != 2) {
      cudaDataType_t biasType = CUDA_R_32F;
      TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType,
                                                sizeof(biasType)));
    }
  }
  if (key.epilogue >= 4) {
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &key.auxLd,
                                              sizeof(key.auxLd)));
  }
  const int64_t m = key.m, n = key.n, k = key.k;
  // Stored shapes (column-major): op(A) is m x k, so A is m x k (N) or k x m (T); likewise B.
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.a, dataType(key.aType), key.transA ? k : m, key.transA ? m : k, key.lda));
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.b, dataType(key.bType), key.transB ? n : k, key.transB ? k : n, key.ldb));
  TRY_CUBLAS(cublasLtMatrixLayoutCreate(&d.c, dataType(key.cType), m, n, key.ldc));
  TRY_CUBLAS(cublasLtMatmulPreferenceCreate(&d.pref));
  uint64_t ws = (uint64_t)key.limitBytes;
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
  plan->workspaceNeed = heuristic.workspaceSize;
  return 0;
}

thread_local std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> t_plans;

}  // namespace

extern "C" {

// Column-major D = alpha * op(A) op(B) + beta * C with D == C (in place), as cuBLAS sees it; the Java side
// maps row-major calls onto it (C^T = op(B)^T op(A)^T). A, B: fp32 or bf16; C: fp32 or bf16; accumulation
// and scale in fp32. computeMode: 0 = fp32 (no TF32), 1 = fp32 with TF32 tensor cores allowed.
// epilogue: 0 none, 1 bias, 2 relu, 3 relu + bias, 4 gelu + bias, 5 gelu; 4 and 5 also write GELU's input (the
// product, plus the bias) to aux, a matrix of C's type and shape with leading dimension auxLd (a multiple of 8;
// Note [fused GELU] in nn.Linear). The bias (a vector of m) has C's type.
// Plans are cached per thread (Note [matmul plan cache]). The algorithm is chosen within limitBytes of workspace;
// workspace/workspaceBytes is the caller's buffer: JNI_CUBLASLT_WORKSPACE (nothing ran) when the algorithm needs
// more, need[0] = the bytes it needs (on success too). smCountTarget: 0 = all SMs, else the SMs the algorithm is
// chosen and launched for (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET; part of the plan's key).
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cublasLtMatmul(
    JNIEnv* env, jclass, jlong handle, jboolean transA, jboolean transB, jlong m, jlong n, jlong k, jfloat alpha,
    jlong a, jlong lda, jint aType, jlong b, jlong ldb, jint bType, jfloat beta, jlong c, jlong ldc, jint cType,
    jint computeMode, jint epilogue, jlong bias, jlong aux, jlong auxLd, jlong workspace,
    jlong workspaceBytes, jlong limitBytes, jint smCountTarget, jlongArray needOut, jlong stream) {
  if (m <= 0 || n <= 0 || k <= 0 || lda <= 0 || ldb <= 0 || ldc < m || workspaceBytes < 0 || limitBytes < 0 ||
      smCountTarget < 0 ||
      epilogue < 0 || epilogue > 5 || needOut == nullptr || env->GetArrayLength(needOut) < 1) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  if ((epilogue == 1 || epilogue == 3 || epilogue == 4) && bias == 0) return jniError(JNI_BAD_ARGUMENT);
  if (epilogue >= 4 && (aux == 0 || auxLd < m || auxLd % 8 != 0)) return jniError(JNI_BAD_ARGUMENT);
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
  key.limitBytes = limitBytes;
  key.smCountTarget = smCountTarget;
  key.auxLd = epilogue >= 4 ? auxLd : 0;
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
  jlong need = (jlong)plan->workspaceNeed;
  if (!putLong(env, needOut, need)) return jniError(JNI_ARRAY);
  if (need > workspaceBytes) return jniError(JNI_CUBLASLT_WORKSPACE);
  if (epilogue == 1 || epilogue == 3 || epilogue == 4) {
    void* biasPtr = fromJ<void*>(bias);
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(plan->d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &biasPtr,
                                              sizeof(biasPtr)));
  }
  if (epilogue >= 4) {
    void* auxPtr = fromJ<void*>(aux);
    TRY_CUBLAS(cublasLtMatmulDescSetAttribute(plan->d.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &auxPtr,
                                              sizeof(auxPtr)));
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

void forgetGraphConvPlans(jlong handle);  // Note [cuDNN graph convolutions]

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnDestroy(JNIEnv*, jclass, jlong h) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  forgetGraphConvPlans(h);  // their execution plans hold the handle: destroyed first, not at thread exit
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
// Note [cuDNN ops]: convolution (forward, backward data, backward filter) and batch norm in evaluation mode
// through cuDNN's legacy descriptor API (the convolutions also through the graph API: Note [cuDNN graph
// convolutions]; pooling and training-mode batch norm run on the project's kernels). Tensors arrive as raw device addresses with a dtype code (FLOAT32 0, BFLOAT16 2; Note
// [dtype codes] in kernels/common.cuh) and a layout (0 NCHW, 1 NHWC; the logical dims are always n, c, h,
// w). Descriptors and the chosen algorithms are built once per shape key and cached per thread, like the
// matmul plans (one device is driven by one thread at a time; plans are never freed).
//
// Algorithm choice: cuDNN's heuristics (Get*Algorithm_v7; search 0, the default: the same algorithms every
// run) or timed trials (Find*Algorithm, search 1, as PyTorch's cudnn.benchmark: fastest first, cuDNN
// allocates its own trial buffers once per shape) rank the candidates; the first one that reports success,
// needs no more workspace than the caller's limit and, with heuristics, for the two backward passes, is
// deterministic (so a run repeats bit for bit) is used. Timed search takes the fastest, deterministic or not,
// as PyTorch does with cudnn.benchmark and cudnn.deterministic off: a ResNet-50 step spent 58% of its time in
// the deterministic backward-data algorithms on an H100 (bf16, NCHW; op profile of 2026-11-26). Ranks still
// end every step with identical parameters (the all-reduce), but two runs may differ in the last bits. The workspace each candidate needs is asked
// once and kept (cuDNN 9 builds an execution plan to answer, which costs as much as a small convolution). If running it fails as unsupported, the next
// candidate is tried and remembered. Math: computeMode 0 = fp32 FMA only (no TF32: results match the CPU
// engine to rounding), 1 = TF32 tensor cores allowed, 2 = bf16 tensor cores (fp32 accumulation).
//
// Workspace (Note [cuDNN workspace] in CudaDevice): the limit (limitBytes, part of the key) chooses the
// algorithm; the caller's buffer (workspace, wsBytes) may be smaller. When the algorithm in use needs more than
// the buffer, the call runs nothing and returns JNI_CUDNN_WORKSPACE with the bytes in need[0]; on success need[0]
// holds the bytes the algorithm that ran needs. So the choice, and the bits, do not depend on the buffer.
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
  ~DnnDescs() {
    const CudnnTable& t = g_cudnn;
    if (!t.ok) return;
    for (auto d : tensors) t.cudnnDestroyTensorDescriptor(d);
    if (filter) t.cudnnDestroyFilterDescriptor(filter);
    for (auto c : conv) if (c) t.cudnnDestroyConvolutionDescriptor(c);
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
  int v[30];
  bool operator==(const DnnKey& o) const { return std::memcmp(v, o.v, sizeof(v)) == 0; }
};
// Zeroes a key (padding takes part in hashing) and fills its common head: kind (1 convolution, (2: pooling, gone),
// 3 batch norm, 4 graph convolution), the current device, dtype and layout. The caller adds its own fields
// from v[4] on.
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

// The arguments both convolution implementations accept (d: the conv dims; need: the out-parameter).
bool convArgsOk(JNIEnv* env, jint dtype, jint layout, jint computeMode, jint search, jlong wsBytes, jlong limit,
                jlongArray need, const int* d) {
  return (dtype == 0 || dtype == 2) && (layout == 0 || layout == 1) && computeMode >= 0 && computeMode <= 2 &&
         (search == 0 || search == 1) && wsBytes >= 0 && limit >= 0 && d[13] > 0 && d[1] % d[13] == 0 &&
         d[4] % d[13] == 0 && need != nullptr && env->GetArrayLength(need) >= 1;
}

// A convolution's answer about the workspace: status st (0, JNI_CUDNN_WORKSPACE or JNI_CUDNN_TRIAL_WORKSPACE)
// with bytes in need[0].
jint withNeed(JNIEnv* env, jlongArray need, jint st, size_t bytes) {
  return putLong(env, need, (jlong)bytes) ? st : jniError(JNI_ARRAY);
}

// Runs one convolution direction: dir 0 y = conv(x, w) (a = x, b = w, c = y), dir 1 dx = convT(dy, w)
// (a = dy, b = w, c = dx), dir 2 dw = dconv(x, dy) (a = x, b = dy, c = dw); c = alpha * result + beta * c.
// The algorithm is chosen within limit; workspace/wsBytes is the caller's buffer (Note [cuDNN ops]).
jint runConv(JNIEnv* env, jlong handle, jint dtype, jint layout, jintArray dimsArray, jint computeMode, jint search,
             int dir, jlong a, jlong b, jlong c, jfloat beta, jlong workspace, jlong wsBytes, jlong limit,
             jlongArray needOut) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  int d[CONV_DIMS];
  if (!readInts(env, dimsArray, d, CONV_DIMS)) return jniError(JNI_BAD_ARGUMENT);
  if (!convArgsOk(env, dtype, layout, computeMode, search, wsBytes, limit, needOut, d)) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  DnnKey key;
  jint kst = dnnKey(1, dtype, layout, &key);  // kind: convolution
  if (kst != 0) return kst;
  key.v[4] = computeMode;
  key.v[5] = (int)(limit >> 20);
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
    jint st = rankConv(h, p, dir, computeMode, (size_t)limit, search);
    if (st != 0) return st;
  }
  const float alpha = 1.0f;
  void* ws = fromJ<void*>(workspace);
  while (p->next[dir] < p->algos[dir].size()) {
    size_t i = p->next[dir];
    TRY_CUDNN(t.cudnnSetConvolutionMathType(p->d.conv[dir], p->maths[dir][i]));
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    const int algo = p->algos[dir][i];
    if (p->needs[dir][i] == SIZE_MAX) {
      size_t asked = 0;
      s = dir == 0 ? t.cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->d.filter, p->d.conv[0], p->y,
                                                                (cudnnConvolutionFwdAlgo_t)algo, &asked)
          : dir == 1 ? t.cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->d.filter, p->y, p->d.conv[1], p->x,
                                                                      (cudnnConvolutionBwdDataAlgo_t)algo, &asked)
                     : t.cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x, p->y, p->d.conv[2], p->d.filter,
                                                                        (cudnnConvolutionBwdFilterAlgo_t)algo, &asked);
      if (s == CUDNN_STATUS_SUCCESS) p->needs[dir][i] = asked;
    }
    const size_t need = s == CUDNN_STATUS_SUCCESS ? p->needs[dir][i] : 0;
    if (s == CUDNN_STATUS_SUCCESS && need <= (size_t)limit) {
      if (need > (size_t)wsBytes) return withNeed(env, needOut, jniError(JNI_CUDNN_WORKSPACE), need);
      if (dir == 0) {
        s = t.cudnnConvolutionForward(h, &alpha, p->x, fromJ<const void*>(a), p->d.filter, fromJ<const void*>(b),
                                      p->d.conv[0], (cudnnConvolutionFwdAlgo_t)algo, ws, (size_t)wsBytes, &beta,
                                      p->y, fromJ<void*>(c));
      } else if (dir == 1) {
        s = t.cudnnConvolutionBackwardData(h, &alpha, p->d.filter, fromJ<const void*>(b), p->y,
                                           fromJ<const void*>(a), p->d.conv[1], (cudnnConvolutionBwdDataAlgo_t)algo,
                                           ws, (size_t)wsBytes, &beta, p->x, fromJ<void*>(c));
      } else {
        s = t.cudnnConvolutionBackwardFilter(h, &alpha, p->x, fromJ<const void*>(a), p->y, fromJ<const void*>(b),
                                             p->d.conv[2], (cudnnConvolutionBwdFilterAlgo_t)algo, ws,
                                             (size_t)wsBytes, &beta, p->d.filter, fromJ<void*>(c));
      }
      if (s == CUDNN_STATUS_SUCCESS) return withNeed(env, needOut, 0, need);
    }
    if (s != CUDNN_STATUS_SUCCESS && s != CUDNN_STATUS_NOT_SUPPORTED && s != CUDNN_STATUS_BAD_PARAM &&
        s != CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH) {
      return cudnn(s);  // a real failure (e.g. execution failed): report it, keep the algorithm
    }
    p->next[dir]++;  // this algorithm cannot run this shape within the limit after all: try the next one
  }
  return jniError(JNI_NO_CUDNN_ALGORITHM);
}

// Batch norm in evaluation mode (training runs on the project's kernels, Note [fused batch norm + ReLU] in
// CudaDevice): x (n, c, h, w) in dtype/layout, per-channel parameters and statistics fp32 (c).
struct BnPlan {
  DnnDescs d;
  cudnnTensorDescriptor_t x = nullptr, bn = nullptr;
  jint status = 0;
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
    jlong workspace, jlong wsBytes, jlong limitBytes, jlongArray need) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 0, x, w, y, beta, workspace, wsBytes,
                 limitBytes, need);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnConvBackwardData(JNIEnv* env, jclass, jlong handle,
    jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong dy, jlong w, jlong dx, jfloat beta,
    jlong workspace, jlong wsBytes, jlong limitBytes, jlongArray need) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 1, dy, w, dx, beta, workspace, wsBytes,
                 limitBytes, need);
}

JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnConvBackwardFilter(JNIEnv* env, jclass,
    jlong handle, jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong x, jlong dy, jlong dw,
    jfloat beta, jlong workspace, jlong wsBytes, jlong limitBytes, jlongArray need) {
  return runConv(env, handle, dtype, layout, dims, computeMode, search, 2, x, dy, dw, beta, workspace, wsBytes,
                 limitBytes, need);
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

}  // extern "C"

// ---------------------------------------------------------------- cuDNN graph convolutions
//
// Note [cuDNN graph convolutions]: the three convolution directions of Note [cuDNN ops] (same dims, dtype,
// layout, computeMode, search and beta; a, b, c as runConv's) through cuDNN 9's backend (graph) API, whose
// engine list holds kernels the legacy entry points never pick (the sm90 NHWC bf16 engines PyTorch's
// convolutions run on). CudaDevice picks the API per process (-Dsparktrainer.cudnn.api, default legacy) and
// answers JNI_NO_CUDNN_ENGINE with the legacy API for that shape.
//
// A plan per key, cached per thread and never freed like the others; the key is the legacy one plus the
// direction, beta, the byte alignment of the three pointers and the handle (the graph and the execution plan
// are bound to it). A plan holds:
//  - tensors x, w, y (uids 'x', 'w', 'y'; the layout's strides, an NHWC filter being (K, kh, kw, C/groups);
//    the alignment the pointers really have: views into flat buffers may be 4-byte aligned), a convolution
//    (fp32 compute, cross-correlation, 2 spatial dims, symmetric padding; groups follow from x's C over w's
//    C/groups), one operation (forward, backward data or backward filter; alpha 1, the caller's beta) and the
//    operation graph holding it;
//  - the candidates: the engine configs of heuristic mode A in its order, then, once those are used up, the
//    fallback mode's, keeping only the configs whose engine's notes fit. Never down-converted inputs or a
//    reduced-precision reduction (every mode accumulates in fp32); for fp32 data with computeMode 0 no tensor
//    cores (no TF32: results match the CPU engine to rounding); for the backward directions under search 0
//    nothing non-deterministic (a seed gives the same bits, as with the legacy API); never an engine that
//    compiles its kernel at run time (NVRTC: seconds per shape inside a training step, and a library the
//    machine may lack);
//  - the execution plan in use and the workspace it needs. search 0: the first candidate whose plan finalizes
//    and needs no more workspace than the caller's limit. search 1 (cudnn.benchmark): up to 8 such plans, each
//    run once to warm up and 3 times between CUDA events on the handle's stream, the median compared, the
//    fastest kept. Timed runs write c; when beta != 0 (c accumulates) they write to a tail of c's size behind
//    their workspace instead, and the candidates may need only the limit less that tail (256-byte aligned; if c
//    takes more than half of the limit, the first plan that fits is used untimed).
// The workspace (Note [cuDNN ops], Note [cuDNN workspace] in CudaDevice): the limit chooses; when the plan in use
// needs more than the caller's buffer, the call returns JNI_CUDNN_WORKSPACE with the bytes, running nothing.
// Timing runs the candidates on the caller's buffer: when it is smaller than the largest candidate's need (plus
// the tail), the call returns JNI_CUDNN_TRIAL_WORKSPACE with those bytes, keeping the finalized candidates for
// the call that brings a trial buffer that large.
// A call binds its pointers in a variant pack built per call (finalized descriptors are read-only). A plan
// whose execution reports NOT_SUPPORTED gives way to the next candidate. When no candidate is left, or cuDNN
// does not support the graph itself, the key keeps JNI_NO_CUDNN_ENGINE and returns it at once from then on.
namespace {

// Owns one backend descriptor (destroyed with its owner); movable so that vectors can hold them.
struct BackendDesc {
  cudnnBackendDescriptor_t d = nullptr;
  BackendDesc() = default;
  BackendDesc(const BackendDesc&) = delete;
  BackendDesc& operator=(const BackendDesc&) = delete;
  BackendDesc(BackendDesc&& o) noexcept : d(o.d) { o.d = nullptr; }
  BackendDesc& operator=(BackendDesc&& o) noexcept {
    if (this != &o) {
      reset();
      d = o.d;
      o.d = nullptr;
    }
    return *this;
  }
  ~BackendDesc() { reset(); }
  void reset() {
    if (d != nullptr) g_cudnn.cudnnBackendDestroyDescriptor(d);
    d = nullptr;
  }
  cudnnStatus_t create(cudnnBackendDescriptorType_t type) {
    reset();
    return g_cudnn.cudnnBackendCreateDescriptor(type, &d);
  }
  cudnnStatus_t set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n,
                    const void* values) const {
    return g_cudnn.cudnnBackendSetAttribute(d, name, type, n, values);
  }
  cudnnStatus_t set(cudnnBackendAttributeName_t name, const BackendDesc& value) const {
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value.d);
  }
  cudnnStatus_t finalize() const { return g_cudnn.cudnnBackendFinalize(d); }
};

#define TRY_CUDART(call)                         \
  do {                                           \
    cudaError_t e_ = (call);                     \
    if (e_ != cudaSuccess) {                     \
      return cudart(e_);                         \
    }                                            \
  } while (0)

bool notSupported(cudnnStatus_t s) { return CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED; }

// A status of building the graph that means "cuDNN cannot do this graph" becomes JNI_NO_CUDNN_ENGINE.
jint orNoEngine(jint st) {
  bool unsupported = ((st >> 24) & 0xff) == LIB_CUDNN && notSupported((cudnnStatus_t)(st & 0xffffff));
  return unsupported ? jniError(JNI_NO_CUDNN_ENGINE) : st;
}

constexpr int64_t UID_X = 'x', UID_W = 'w', UID_Y = 'y';
// The tensor that each of a, b, c is, per direction (runConv's order).
constexpr int64_t GRAPH_UIDS[3][3] = {{UID_X, UID_W, UID_Y}, {UID_Y, UID_W, UID_X}, {UID_X, UID_Y, UID_W}};
constexpr size_t GRAPH_MAX_TIMED = 8;

// The operation descriptor of each direction and its attributes for x, w, y, the convolution, alpha, beta.
struct ConvOpAttrs {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
};
const ConvOpAttrs CONV_OPS[3] = {
    {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
     CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
     CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
     CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
    {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
    {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
     CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA},
};

struct GraphConvPlan {
  BackendDesc x, w, y, conv, op, graph;  // declared first: destroyed after the configs and plan that use them
  std::vector<BackendDesc> candidates;   // engine configs that pass the Note's filters, in heuristic order
  bool fallbackListed = false;           // the fallback mode's configs have been appended
  size_t next = 0;                       // the candidate the plan in use came from, or the next one to try
  BackendDesc plan;                      // the execution plan in use; null until chosen
  int64_t planNeed = 0;                  // its workspace bytes
  // search 1: the finalized plans to time (candidate index, workspace bytes), listed once per choice
  struct Trial {
    size_t index;
    int64_t need;
    BackendDesc plan;
  };
  std::vector<Trial> trials;
  bool trialsListed = false;
  size_t trialsFirst = 0;  // p->next when they were listed
  jint status = 0;  // non-zero: building failed with this status, or JNI_NO_CUDNN_ENGINE (returned again)
};

thread_local std::unordered_map<DnnKey, std::unique_ptr<GraphConvPlan>, DnnKeyHash> t_graphConvPlans;

}  // namespace

// Destroys this thread's graph plans made with handle h (their keys hold it, v[28..29]); cudnnDestroy calls it
// first. A plan must not outlive its handle: destroying it at thread exit, after the device closed the handle,
// would touch freed cuDNN state. (Plans of other threads with the same handle keep the old behaviour.)
void forgetGraphConvPlans(jlong handle) {
  for (auto it = t_graphConvPlans.begin(); it != t_graphConvPlans.end();) {
    jlong h = 0;
    std::memcpy(&h, &it->first.v[28], sizeof(h));
    it = h == handle ? t_graphConvPlans.erase(it) : std::next(it);
  }
}

namespace {

// A finalized tensor (n, c, h, w) of the dtype in the layout: strides NCHW (chw, hw, w, 1), NHWC (hwc, 1, wc, c).
jint graphTensor(BackendDesc* t, int64_t uid, jint dtype, jint layout, int64_t n, int64_t c, int64_t h, int64_t w,
                 int64_t align) {
  const int64_t dims[4] = {n, c, h, w};
  const int64_t nchw[4] = {c * h * w, h * w, w, 1};
  const int64_t nhwc[4] = {h * w * c, 1, w * c, c};
  const cudnnDataType_t type = dnnType(dtype);
  TRY_CUDNN(t->create(CUDNN_BACKEND_TENSOR_DESCRIPTOR));
  TRY_CUDNN(t->set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type));
  TRY_CUDNN(t->set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
  TRY_CUDNN(t->set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, layout == 1 ? nhwc : nchw));
  TRY_CUDNN(t->set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
  TRY_CUDNN(t->set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
  TRY_CUDNN(t->finalize());
  return 0;
}

// Builds the tensors, convolution, operation and operation graph of one direction (d: the conv dims; align:
// the byte alignment of a, b, c).
jint buildGraphConv(cudnnHandle_t h, GraphConvPlan* p, int dir, jint dtype, jint layout, const int* d, float beta,
                    const int64_t* align) {
  auto alignOf = [&](int64_t uid) {
    for (int i = 0; i < 3; i++) {
      if (GRAPH_UIDS[dir][i] == uid) return align[i];
    }
    return (int64_t)1;
  };
  const int64_t n = d[0], c = d[1], k = d[4], groupC = d[1] / d[13];
  jint st = graphTensor(&p->x, UID_X, dtype, layout, n, c, d[2], d[3], alignOf(UID_X));
  if (st == 0) st = graphTensor(&p->w, UID_W, dtype, layout, k, groupC, d[5], d[6], alignOf(UID_W));
  if (st == 0) st = graphTensor(&p->y, UID_Y, dtype, layout, n, k, d[14], d[15], alignOf(UID_Y));
  if (st != 0) return st;
  const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const int64_t spatial = 2;
  const int64_t pads[2] = {d[7], d[8]}, strides[2] = {d[9], d[10]}, dilations[2] = {d[11], d[12]};
  TRY_CUDNN(p->conv.create(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pads));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pads));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides));
  TRY_CUDNN(p->conv.set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilations));
  TRY_CUDNN(p->conv.finalize());
  const ConvOpAttrs& a = CONV_OPS[dir];
  const float alpha = 1.0f;
  TRY_CUDNN(p->op.create(a.type));
  TRY_CUDNN(p->op.set(a.x, p->x));
  TRY_CUDNN(p->op.set(a.w, p->w));
  TRY_CUDNN(p->op.set(a.y, p->y));
  TRY_CUDNN(p->op.set(a.conv, p->conv));
  TRY_CUDNN(p->op.set(a.alpha, CUDNN_TYPE_FLOAT, 1, &alpha));
  TRY_CUDNN(p->op.set(a.beta, CUDNN_TYPE_FLOAT, 1, &beta));
  TRY_CUDNN(p->op.finalize());
  TRY_CUDNN(p->graph.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  TRY_CUDNN(p->graph.set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h));
  TRY_CUDNN(p->graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, p->op));
  TRY_CUDNN(p->graph.finalize());
  return 0;
}

// *ok = cfg's engine may run under the Note's rules (its numerical and behaviour notes).
jint engineAllowed(const BackendDesc& cfg, int dir, jint dtype, jint computeMode, jint search, bool* ok) {
  const CudnnTable& t = g_cudnn;
  BackendDesc engine;
  TRY_CUDNN(engine.create(CUDNN_BACKEND_ENGINE_DESCRIPTOR));
  int64_t n = 0;
  TRY_CUDNN(t.cudnnBackendGetAttribute(cfg.d, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                       &engine.d));
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  TRY_CUDNN(t.cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                       CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes));
  *ok = true;
  for (int64_t i = 0; i < n; i++) {
    switch (notes[i]) {
      case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
      case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
        *ok = false;
        break;
      case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        if (dtype == 0 && computeMode == 0) *ok = false;  // TF32
        break;
      case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
        if (dir != 0 && search == 0) *ok = false;
        break;
      default:
        break;
    }
  }
  cudnnBackendBehaviorNote_t behaviour[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
  TRY_CUDNN(t.cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                       CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n, behaviour));
  for (int64_t i = 0; i < n; i++) {
    if (behaviour[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) *ok = false;
  }
  return 0;
}

// Appends the engine configs of one heuristic mode that pass engineAllowed to p->candidates.
jint listEngines(GraphConvPlan* p, cudnnBackendHeurMode_t mode, int dir, jint dtype, jint computeMode, jint search) {
  const CudnnTable& t = g_cudnn;
  BackendDesc heur;
  TRY_CUDNN(heur.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
  TRY_CUDNN(heur.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, p->graph));
  TRY_CUDNN(heur.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode));
  cudnnStatus_t s = heur.finalize();
  if (notSupported(s)) return 0;  // this mode has nothing for the graph
  TRY_CUDNN(s);
  int64_t count = 0;
  TRY_CUDNN(t.cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                       nullptr));
  if (count <= 0) return 0;
  std::vector<BackendDesc> configs((size_t)count);
  std::vector<cudnnBackendDescriptor_t> raw((size_t)count);
  for (size_t i = 0; i < configs.size(); i++) {
    TRY_CUDNN(configs[i].create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    raw[i] = configs[i].d;
  }
  int64_t got = 0;
  TRY_CUDNN(t.cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                       &got, raw.data()));
  for (int64_t i = 0; i < got && i < count; i++) {
    bool ok = false;
    jint st = engineAllowed(configs[(size_t)i], dir, dtype, computeMode, search, &ok);
    if (st != 0) return st;
    if (ok) p->candidates.push_back(std::move(configs[(size_t)i]));
  }
  return 0;
}

// Finalizes an execution plan for cfg; *need = its workspace bytes, or -1 when this config cannot run the graph.
jint makeExecutionPlan(cudnnHandle_t h, const BackendDesc& cfg, BackendDesc* plan, int64_t* need) {
  *need = -1;
  TRY_CUDNN(plan->create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR));
  TRY_CUDNN(plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h));
  TRY_CUDNN(plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg));
  if (plan->finalize() != CUDNN_STATUS_SUCCESS) return 0;  // skipped, whatever the reason
  int64_t n = 0;
  TRY_CUDNN(g_cudnn.cudnnBackendGetAttribute(plan->d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                             &n, need));
  return 0;
}

// From candidate p->next on (appending the fallback mode's configs once the others are used up), the first
// whose plan finalizes with at most budget bytes of workspace: into *plan (its workspace bytes into *planNeed),
// p->next pointing at it; else JNI_NO_CUDNN_ENGINE.
jint nextFittingPlan(cudnnHandle_t h, GraphConvPlan* p, int dir, jint dtype, jint computeMode, jint search,
                     int64_t budget, BackendDesc* plan, int64_t* planNeed) {
  while (true) {
    if (p->next >= p->candidates.size()) {
      if (p->fallbackListed) return jniError(JNI_NO_CUDNN_ENGINE);
      p->fallbackListed = true;
      jint st = listEngines(p, CUDNN_HEUR_MODE_FALLBACK, dir, dtype, computeMode, search);
      if (st != 0) return st;
      continue;
    }
    int64_t need = -1;
    jint st = makeExecutionPlan(h, p->candidates[p->next], plan, &need);
    if (st != 0) return st;
    if (need >= 0 && need <= budget) {
      *planNeed = need;
      return 0;
    }
    plan->reset();
    p->next++;
  }
}

// A finalized variant pack binding a, b, c (the direction's tensors) and the workspace.
jint variantPack(int dir, void* const* ptrs, void* workspace, BackendDesc* vp) {
  TRY_CUDNN(vp->create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  TRY_CUDNN(vp->set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, GRAPH_UIDS[dir]));
  TRY_CUDNN(vp->set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs));
  TRY_CUDNN(vp->set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace));
  TRY_CUDNN(vp->finalize());
  return 0;
}

// Two CUDA events for timing, destroyed with their owner.
struct TimingEvents {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~TimingEvents() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};

// *ms = the median of 3 timed runs of plan (after a warm-up run), or -1 when it reports NOT_SUPPORTED.
jint timePlan(cudnnHandle_t h, const BackendDesc& plan, const BackendDesc& vp, cudaStream_t stream,
              const TimingEvents& ev, float* ms) {
  const CudnnTable& t = g_cudnn;
  *ms = -1;
  cudnnStatus_t s = t.cudnnBackendExecute(h, plan.d, vp.d);
  if (notSupported(s)) return 0;
  TRY_CUDNN(s);
  float runs[3];
  for (float& r : runs) {
    TRY_CUDART(cudaEventRecord(ev.start, stream));
    TRY_CUDNN(t.cudnnBackendExecute(h, plan.d, vp.d));
    TRY_CUDART(cudaEventRecord(ev.stop, stream));
    TRY_CUDART(cudaEventSynchronize(ev.stop));
    TRY_CUDART(cudaEventElapsedTime(&r, ev.start, ev.stop));
  }
  std::sort(runs, runs + 3);
  *ms = runs[1];
  return 0;
}

// Chooses p->plan and p->planNeed within limit (Note [cuDNN graph convolutions]): ptrs = a, b, c; outBytes = the
// bytes of c's tensor; workspace/wsBytes: the caller's buffer, on which search 1 times the candidates. When that
// is too small for them: JNI_CUDNN_TRIAL_WORKSPACE, *trialBytes = what they need, the candidates kept.
jint chooseGraphPlan(cudnnHandle_t h, GraphConvPlan* p, int dir, jint dtype, jint computeMode, jint search,
                     void* const* ptrs, size_t outBytes, jfloat beta, jlong workspace, jlong wsBytes, jlong limit,
                     const BackendDesc& vp, int64_t* trialBytes) {
  if (search == 0 || (beta != 0.0f && outBytes > (size_t)limit / 2)) {
    return nextFittingPlan(h, p, dir, dtype, computeMode, search, limit, &p->plan, &p->planNeed);
  }
  // Timed runs with beta != 0 write to a tail of outBytes behind their workspace: the candidates get the limit
  // less the tail, 256-byte aligned (what they got when the buffer was always the limit's size).
  const int64_t budget = beta != 0.0f ? (int64_t)(((size_t)limit - outBytes) & ~(size_t)255) : (int64_t)limit;
  if (!p->trialsListed) {
    p->trials.clear();
    p->trialsFirst = p->next;
    for (size_t tried = 0; tried < GRAPH_MAX_TIMED; tried++, p->next++) {
      GraphConvPlan::Trial trial{0, 0, BackendDesc()};
      jint st = nextFittingPlan(h, p, dir, dtype, computeMode, search, budget, &trial.plan, &trial.need);
      if (st == jniError(JNI_NO_CUDNN_ENGINE)) break;
      if (st != 0) {
        p->trials.clear();
        p->next = p->trialsFirst;
        return st;
      }
      trial.index = p->next;
      p->trials.push_back(std::move(trial));
    }
    p->trialsListed = true;
  }
  const size_t first = p->trialsFirst;
  size_t best = SIZE_MAX;
  if (!p->trials.empty()) {
    int64_t most = 0;
    for (const auto& trial : p->trials) most = std::max(most, trial.need);
    const int64_t tailAt = (most + 255) & ~(int64_t)255;
    const int64_t need = beta != 0.0f ? tailAt + (int64_t)outBytes : most;
    if (need > wsBytes) {
      *trialBytes = need;
      return jniError(JNI_CUDNN_TRIAL_WORKSPACE);
    }
    BackendDesc redirected;
    if (beta != 0.0f) {
      uintptr_t tail = ((uintptr_t)workspace + (size_t)wsBytes - outBytes) & ~(uintptr_t)255;
      void* const timed[3] = {ptrs[0], ptrs[1], reinterpret_cast<void*>(tail)};
      jint st = variantPack(dir, timed, fromJ<void*>(workspace), &redirected);
      if (st != 0) return st;
    }
    const BackendDesc& timedVp = beta != 0.0f ? redirected : vp;
    cudaStream_t stream = nullptr;
    TRY_CUDNN(g_cudnn.cudnnGetStream(h, &stream));
    TimingEvents ev;
    TRY_CUDART(cudaEventCreate(&ev.start));
    TRY_CUDART(cudaEventCreate(&ev.stop));
    float bestMs = 0;
    for (size_t i = 0; i < p->trials.size(); i++) {
      float ms = -1;
      jint st = timePlan(h, p->trials[i].plan, timedVp, stream, ev, &ms);
      if (st != 0) return st;
      if (ms >= 0 && (best == SIZE_MAX || ms < bestMs)) {
        best = i;
        bestMs = ms;
      }
    }
  }
  std::vector<GraphConvPlan::Trial> trials = std::move(p->trials);
  p->trials.clear();
  p->trialsListed = false;
  // No plan was timed (none fits the timing budget, or none ran): the first that fits the whole limit.
  if (best == SIZE_MAX) {
    p->next = first;
    return nextFittingPlan(h, p, dir, dtype, computeMode, search, limit, &p->plan, &p->planNeed);
  }
  p->next = trials[best].index;
  p->planNeed = trials[best].need;
  p->plan = std::move(trials[best].plan);
  return 0;
}

// Bytes of the tensor with this uid (d: the conv dims).
size_t graphTensorBytes(int64_t uid, jint dtype, const int* d) {
  size_t elems = uid == UID_X   ? (size_t)d[0] * d[1] * d[2] * d[3]
                 : uid == UID_W ? (size_t)d[4] * (d[1] / d[13]) * d[5] * d[6]
                                : (size_t)d[0] * d[4] * d[14] * d[15];
  return elems * (dtype == 2 ? 2 : 4);
}

// Runs one direction through the graph API (Note [cuDNN graph convolutions]); arguments as runConv's.
jint runGraphConv(JNIEnv* env, jlong handle, jint dir, jint dtype, jint layout, jintArray dimsArray, jint computeMode,
                  jint search, jlong a, jlong b, jlong c, jfloat beta, jlong workspace, jlong wsBytes, jlong limit,
                  jlongArray needOut) {
  const CudnnTable& t = cudnnTable();
  if (!t.ok) return jniError(JNI_NO_CUDNN);
  int d[CONV_DIMS];
  if (!readInts(env, dimsArray, d, CONV_DIMS)) return jniError(JNI_BAD_ARGUMENT);
  if (dir < 0 || dir > 2 || !convArgsOk(env, dtype, layout, computeMode, search, wsBytes, limit, needOut, d)) {
    return jniError(JNI_BAD_ARGUMENT);
  }
  const jlong ptr[3] = {a, b, c};
  DnnKey key;
  jint kst = dnnKey(4, dtype, layout, &key);  // kind: graph convolution
  if (kst != 0) return kst;
  key.v[4] = computeMode;
  key.v[5] = (int)(limit >> 20);
  for (int i = 0; i < CONV_DIMS; i++) key.v[6 + i] = d[i];
  key.v[22] = search;
  key.v[23] = dir;
  std::memcpy(&key.v[24], &beta, sizeof(beta));
  int64_t align[3];
  for (int i = 0; i < 3; i++) {
    align[i] = alignment(ptr[i]);
    key.v[25 + i] = (int)align[i];
  }
  std::memcpy(&key.v[28], &handle, sizeof(handle));
  cudnnHandle_t h = fromJ<cudnnHandle_t>(handle);
  auto it = t_graphConvPlans.find(key);
  GraphConvPlan* p;
  if (it == t_graphConvPlans.end()) {
    std::unique_ptr<GraphConvPlan> np(new GraphConvPlan());
    np->status = orNoEngine(buildGraphConv(h, np.get(), dir, dtype, layout, d, beta, align));
    if (np->status == 0) np->status = listEngines(np.get(), CUDNN_HEUR_MODE_A, dir, dtype, computeMode, search);
    p = np.get();
    t_graphConvPlans.emplace(key, std::move(np));
  } else {
    p = it->second.get();
  }
  if (p->status != 0) return p->status;
  void* const ptrs[3] = {fromJ<void*>(a), fromJ<void*>(b), fromJ<void*>(c)};
  BackendDesc vp;
  jint st = variantPack(dir, ptrs, fromJ<void*>(workspace), &vp);
  if (st != 0) return st;
  while (true) {
    if (p->plan.d == nullptr) {
      int64_t trialBytes = 0;
      st = chooseGraphPlan(h, p, dir, dtype, computeMode, search, ptrs, graphTensorBytes(GRAPH_UIDS[dir][2], dtype, d),
                           beta, workspace, wsBytes, limit, vp, &trialBytes);
      if (st == jniError(JNI_CUDNN_TRIAL_WORKSPACE)) return withNeed(env, needOut, st, (size_t)trialBytes);
      if (st == jniError(JNI_NO_CUDNN_ENGINE)) p->status = st;
      if (st != 0) return st;
    }
    if (p->planNeed > wsBytes) return withNeed(env, needOut, jniError(JNI_CUDNN_WORKSPACE), (size_t)p->planNeed);
    cudnnStatus_t s = t.cudnnBackendExecute(h, p->plan.d, vp.d);
    if (s == CUDNN_STATUS_SUCCESS) return withNeed(env, needOut, 0, (size_t)p->planNeed);
    if (!notSupported(s)) return cudnn(s);
    p->plan.reset();  // this engine cannot run the call after all: try the next candidate
    p->next++;
  }
}

}  // namespace

extern "C" {

// dir 0 forward (a x, b w, c y), 1 backward data (a dy, b w, c dx), 2 backward filter (a x, b dy, c dw);
// c = result + beta * c. JNI_NO_CUDNN_ENGINE: no engine for this shape, use cudnnConv* (the legacy API).
// JNI_CUDNN_WORKSPACE / JNI_CUDNN_TRIAL_WORKSPACE: need[0] bytes of workspace wanted, nothing ran.
JNIEXPORT jint JNICALL Java_dev_sparktrainer_cuda_Native_cudnnGraphConv(JNIEnv* env, jclass, jlong handle, jint dir,
    jint dtype, jint layout, jintArray dims, jint computeMode, jint search, jlong a, jlong b, jlong c, jfloat beta,
    jlong workspace, jlong wsBytes, jlong limitBytes, jlongArray need) {
  return runGraphConv(env, handle, dir, dtype, layout, dims, computeMode, search, a, b, c, beta, workspace, wsBytes,
                      limitBytes, need);
}

}  // extern "C"
