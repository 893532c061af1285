package dev.sparktrainer.spark;

import dev.sparktrainer.comm.WorkerContext;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.resource.ResourceInformation;

/** A {@link WorkerContext} backed by Spark's BarrierTaskContext: rank = partition id, allGather = Spark's. */
public final class SparkWorkerContext implements WorkerContext {
  private final BarrierTaskContext ctx;
  private final String token;
  private final int gpu;

  public SparkWorkerContext(BarrierTaskContext ctx, String token) {
    this.ctx = ctx;
    this.token = token;
    this.gpu = gpuFromResources(ctx);
  }

  /** The GPU address Spark assigned to this task, or -1 when it has none (local mode, CPU clusters). */
  static int gpuFromResources(BarrierTaskContext ctx) {
    ResourceInformation ri = ctx.resourcesJMap().get("gpu");
    if (ri == null || ri.addresses().length == 0) {
      return -1;
    }
    if (ri.addresses().length > 1) {
      throw new IllegalStateException("task got " + ri.addresses().length + " GPUs " + Arrays.toString(ri.addresses())
          + "; the training stage needs exactly one per task (spark.task.resource.gpu.amount=1)");
    }
    try {
      return Integer.parseInt(ri.addresses()[0].trim());
    } catch (NumberFormatException e) {
      throw new IllegalStateException("GPU address '" + ri.addresses()[0] + "' is not a device ordinal; "
          + "the GPU discovery script must print ordinals such as \"0\", \"1\"", e);
    }
  }

  @Override
  public int rank() {
    return ctx.partitionId();
  }

  @Override
  public int worldSize() {
    return ctx.getTaskInfos().length;
  }

  @Override
  public int gpu() {
    return gpu;
  }

  @Override
  public List<String> allGather(String message) {
    return Arrays.asList(ctx.allGather(message));
  }

  @Override
  public String jobToken() {
    return token;
  }

  /** The host this task runs on, as Spark knows it (for peers to connect to). */
  public String host() {
    String addr = ctx.getTaskInfos()[rank()].address();
    int colon = addr.lastIndexOf(':');
    return colon > 0 ? addr.substring(0, colon) : addr;
  }
}
