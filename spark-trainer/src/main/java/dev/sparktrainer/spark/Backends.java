package dev.sparktrainer.spark;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.comm.WorkerContext;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cuda.Cuda;
import dev.sparktrainer.cuda.CudaDevice;
import dev.sparktrainer.cuda.GpuSelector;
import dev.sparktrainer.cuda.NcclCommunicator;
import dev.sparktrainer.cuda.NativeLoader;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import java.time.Duration;

/**
 * Opens the device and communicator a worker trains with: "cpu" (CpuDevice + TCP ring) or "cuda" (CudaDevice
 * + NCCL). "auto" picks cuda when the task got a GPU from Spark, or, without GPU resources (local mode),
 * when this host has a usable CUDA device and the native library loads; otherwise cpu.
 */
public final class Backends {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(Backends.class);

  private Backends() {}

  /** The concrete device name for a requested one ("cpu", "cuda" or "auto"). */
  public static String resolve(String device, WorkerContext ctx) {
    if (!"auto".equals(device)) {
      return device;
    }
    if (ctx.gpu() >= 0) {
      return "cuda";
    }
    if (!nvidiaDriverPresent()) {
      // Loading JCuda's natives only to learn that there is no driver costs ~1 s per task.
      if (ctx.rank() == 0) {
        LOG.info("device auto -> cpu: no NVIDIA driver on this host (/proc/driver/nvidia/version is absent)");
      }
      return "cpu";
    }
    Cuda.Availability a = Cuda.availability();
    if (a.available() && NativeLoader.jniAvailable()) {
      return "cuda";
    }
    if (ctx.rank() == 0) {
      LOG.info("device auto -> cpu: " + (a.available() ? NativeLoader.jniProblem() : a.reason()));
    }
    return "cpu";
  }

  /** Whether the NVIDIA kernel driver is loaded on this (Linux) host; true elsewhere, where we cannot tell. */
  static boolean nvidiaDriverPresent() {
    if (!System.getProperty("os.name", "").toLowerCase(java.util.Locale.ROOT).contains("linux")) {
      return true;
    }
    return java.nio.file.Files.exists(java.nio.file.Path.of("/proc/driver/nvidia/version"));
  }

  public static Device openDevice(String resolved, WorkerContext ctx) {
    return switch (resolved) {
      case "cpu" -> new CpuDevice();
      case "cuda" -> new CudaDevice(GpuSelector.select(ctx));
      default -> throw new IllegalArgumentException("unknown device '" + resolved + "' (use cpu, cuda or auto)");
    };
  }

  /**
   * The precision a rank trains in for the estimator's {@code precision} ("fp32", "bf16" or "auto") on a
   * resolved device ("cpu" or "cuda"): auto is bf16 on cuda and fp32 on cpu. Returns "fp32" or "bf16".
   */
  public static String resolvePrecision(String precision, String resolvedDevice) {
    return switch (precision) {
      case "fp32", "bf16" -> precision;
      case "auto" -> "cuda".equals(resolvedDevice) ? "bf16" : "fp32";
      default -> throw new IllegalArgumentException("precision must be fp32, bf16 or auto, got '" + precision + "'");
    };
  }

  /** The compute dtype the model is built with for a resolved precision ("fp32" or "bf16"). */
  public static DType computeDType(String resolvedPrecision) {
    return switch (resolvedPrecision) {
      case "fp32" -> DType.FLOAT32;
      case "bf16" -> DType.BFLOAT16;
      default -> throw new IllegalArgumentException("resolved precision must be fp32 or bf16, got '"
          + resolvedPrecision + "'");
    };
  }

  /** The communicator for the device: NCCL between CudaDevices, the TCP ring between CPU devices. */
  public static Communicator openCommunicator(Device device, WorkerContext ctx, String host, Duration timeout) {
    if (ctx.worldSize() == 1) {
      return new LocalCommunicator();
    }
    if (device instanceof CudaDevice cuda) {
      return NcclCommunicator.create(ctx, cuda, timeout);
    }
    return RingCommunicator.create(ctx, host, timeout);
  }
}
