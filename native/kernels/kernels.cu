// The project's CUDA kernels, one translation unit so nvcc emits one fatbin
// (sparktrainer_kernels.fatbin: sm_80 + sm_90 code and compute_90 PTX). Java loads it with JCuda's
// cuModuleLoadData and looks the kernels up by their extern "C" names (see dev.sparktrainer.cuda.Kernels).
// Build: native/CMakeLists.txt or native/build-kernels.sh; the fatbin is compiled with --fmad=false
// (see Note [parity with the CPU engine] in common.cuh).
#include "common.cuh"
#include "elementwise.cuh"
#include "reduce.cuh"
#include "loss.cuh"
#include "optim.cuh"
#include "linear.cuh"
#include "gemm_ref.cuh"
#include "conv.cuh"
#include "bn_sync.cuh"
#include "pool.cuh"

// Version tag the Java side checks at load (Kernels.ABI_VERSION), so a stale fatbin is reported instead of running
// kernels whose parameters changed. Raise both together whenever a kernel's parameters change.
extern "C" __global__ void st_abi_version(int* out) { out[0] = 2; }
