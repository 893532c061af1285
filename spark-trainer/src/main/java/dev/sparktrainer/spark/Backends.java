package dev.sparktrainer.spark;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.RingCommunicator;
import dev.sparktrainer.comm.WorkerContext;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.Device;
import java.time.Duration;

/** Opens the device and communicator a worker trains with, from the device name ("cpu", "cuda", "auto"). */
public final class Backends {
  private Backends() {}

  /** "auto" means cuda when the task got a GPU from Spark, else cpu. */
  public static String resolve(String device, WorkerContext ctx) {
    if ("auto".equals(device)) {
      return ctx.gpu() >= 0 ? "cuda" : "cpu";
    }
    return device;
  }

  public static Device openDevice(String resolved, WorkerContext ctx) {
    if ("cpu".equals(resolved)) {
      return new CpuDevice();
    }
    throw new UnsupportedOperationException("device '" + resolved + "' is not available in this build; use "
        + "device=cpu");
  }

  public static Communicator openCommunicator(String resolved, WorkerContext ctx, String host, Duration timeout) {
    if (ctx.worldSize() == 1) {
      return new LocalCommunicator();
    }
    return RingCommunicator.create(ctx, host, timeout);
  }
}
