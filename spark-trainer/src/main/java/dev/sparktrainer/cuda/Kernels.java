package dev.sparktrainer.cuda;

import static jcuda.driver.JCudaDriver.cuLaunchKernel;
import static jcuda.driver.JCudaDriver.cuMemAlloc;
import static jcuda.driver.JCudaDriver.cuMemFree;
import static jcuda.driver.JCudaDriver.cuMemcpyDtoH;
import static jcuda.driver.JCudaDriver.cuModuleGetFunction;
import static jcuda.driver.JCudaDriver.cuModuleLoadData;
import static jcuda.driver.JCudaDriver.cuModuleUnload;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import jcuda.NativePointerObject;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.CUresult;

/**
 * The project's kernels (native/kernels/*.cuh) loaded from the fatbin into one device's context, looked up
 * by their extern "C" names, plus a small argument builder for cuLaunchKernel. Owned by a
 * {@link CudaDevice}; close unloads the module.
 */
final class Kernels implements AutoCloseable {
  /** Every kernel the Java side launches; all are looked up at load time so a stale fatbin fails early. */
  static final List<String> NAMES = List.of("st_fill", "st_fill_i32", "st_copy", "st_axpy", "st_scale",
      "st_scale_check", "st_relu", "st_relu_bwd", "st_gelu", "st_gelu_bwd", "st_dropout", "st_add_bias",
      "st_bias_grad", "st_sum_partial", "st_sum_final", "st_softmax_xent", "st_softmax", "st_mse", "st_argmax",
      "st_count_correct", "st_sgd", "st_adamw", "st_gemm_ref", "st_bias_act", "st_act_bwd_colsum", "st_gelu_bwd_colsum",
      "st_colsum_final", "st_sgd_m", "st_sgd_m4", "st_sum_slices", "st_adamw_m", "st_channel_bias", "st_layout_convert", "st_add2",
      "st_bn_partials_nchw", "st_bn_partials_nhwc", "st_bn_sums_nhwc", "st_bn_partials_final", "st_bn_finalize", "st_bn_apply",
      "st_bn_bwd_apply", "st_max_pool_fwd", "st_avg_pool_fwd", "st_max_pool_bwd", "st_avg_pool_bwd", "st_abi_version");

  /**
   * What st_abi_version (native/kernels/kernels.cu) must write: raised with it whenever a kernel's parameters change,
   * so that a fatbin built from older sources (-Dsparktrainer.native.dir) fails at load instead of running with
   * arguments it does not read (2: the optimizers and st_sum_slices take the own gradient slice, engine.GradientSlices).
   */
  static final int ABI_VERSION = 2;

  private final CUmodule module = new CUmodule();
  private final Map<String, CUfunction> functions = new HashMap<>();
  private boolean closed;

  Kernels(byte[] image) {
    this(image, ABI_VERSION);
  }

  /** As {@link #Kernels(byte[])}, requiring kernel ABI {@code abiVersion} (tests: the stale-fatbin error). */
  Kernels(byte[] image, int abiVersion) {
    int r = cuModuleLoadData(module, image);
    if (r != CUresult.CUDA_SUCCESS) {
      String hint = r == CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUresult.CUDA_ERROR_INVALID_PTX
          || r == CUresult.CUDA_ERROR_UNSUPPORTED_PTX_VERSION
          ? " (the fatbin has code for sm_80 and sm_90 and PTX for compute_90; this GPU or driver needs"
              + " another build: add its architecture in native/CMakeLists.txt, or update the driver)"
          : "";
      Cuda.check(r, "cuModuleLoadData(" + NativeLoader.KERNELS_FILE + ", " + image.length + " bytes)" + hint);
    }
    try {
      for (String n : NAMES) {
        CUfunction f = new CUfunction();
        int fr = cuModuleGetFunction(f, module, n);
        if (fr != CUresult.CUDA_SUCCESS) {
          throw new CudaException("CUDA driver", fr, "kernel " + n + " is missing from "
              + NativeLoader.KERNELS_FILE + " (" + Cuda.errorText(fr) + "): the fatbin is older than this jar;"
              + " rebuild native/ (native/README.md)");
        }
        functions.put(n, f);
      }
      int abi = abiVersion(functions.get("st_abi_version"));
      if (abi != abiVersion) {
        throw new CudaException("CUDA driver", CUresult.CUDA_ERROR_INVALID_IMAGE, NativeLoader.KERNELS_FILE
            + " has kernel ABI " + abi + ", this jar needs " + abiVersion + ": the fatbin was built from other"
            + " sources; rebuild native/ (native/README.md) or drop -Dsparktrainer.native.dir");
      }
    } catch (RuntimeException e) {
      cuModuleUnload(module);
      throw e;
    }
  }

  /** Runs st_abi_version once (on the null stream; the copy back waits for it) and returns what it wrote. */
  private static int abiVersion(CUfunction f) {
    CUdeviceptr out = new CUdeviceptr();
    Cuda.check(cuMemAlloc(out, 4), "cuMemAlloc (kernel ABI check)");
    try {
      Cuda.check(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, null, Pointer.to(Pointer.to(out)), null),
          "launch of st_abi_version");
      int[] v = new int[1];
      Cuda.check(cuMemcpyDtoH(Pointer.to(v), out, 4), "cuMemcpyDtoH (kernel ABI check)");
      return v[0];
    } finally {
      Cuda.check(cuMemFree(out), "cuMemFree (kernel ABI check)");
    }
  }

  CUfunction get(String name) {
    if (closed) {
      throw new IllegalStateException("kernels are unloaded (device closed)");
    }
    CUfunction f = functions.get(name);
    if (f == null) {
      throw new IllegalArgumentException("unknown kernel " + name);
    }
    return f;
  }

  /** Starts an argument list for kernel {@code name}. */
  Launch launch(String name) {
    return new Launch(name, get(name));
  }

  @Override
  public void close() {
    if (!closed) {
      closed = true;
      Cuda.check(cuModuleUnload(module), "cuModuleUnload");
    }
  }

  /** Kernel arguments in declaration order: pointers and int64 as long, int32, float. */
  static final class Launch {
    private final String name;
    private final CUfunction fn;
    private final NativePointerObject[] args = new NativePointerObject[20];
    private int n;

    Launch(String name, CUfunction fn) {
      this.name = name;
      this.fn = fn;
    }

    /** A device pointer (0 = null) or an int64_t/uint64_t. */
    Launch l(long v) {
      args[n++] = Pointer.to(new long[] {v});
      return this;
    }

    Launch i(int v) {
      args[n++] = Pointer.to(new int[] {v});
      return this;
    }

    Launch f(float v) {
      args[n++] = Pointer.to(new float[] {v});
      return this;
    }

    /** Launches a 1-D grid on {@code stream}. */
    void run(int grid, int block, CudaStream stream) {
      run2d(grid, 1, block, 1, stream);
    }

    /** Launches a 2-D grid of 2-D blocks on {@code stream}. */
    void run2d(int gridX, int gridY, int blockX, int blockY, CudaStream stream) {
      NativePointerObject[] a = java.util.Arrays.copyOf(args, n);
      int r = cuLaunchKernel(fn, Math.max(1, gridX), Math.max(1, gridY), 1, blockX, blockY, 1, 0, stream.cu(),
          Pointer.to(a), null);
      if (r != 0) {
        Cuda.check(r, "launch of " + name + " (grid " + gridX + "x" + gridY + ", block " + blockX + "x" + blockY + ")");
      }
    }
  }
}
