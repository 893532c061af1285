package dev.sparktrainer.spark;

import dev.sparktrainer.comm.WorkerContext;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.resource.ResourceInformation;

/**
 * A {@link WorkerContext} backed by Spark's BarrierTaskContext: rank = partition id; allGather through the
 * driver's rendezvous (Note [driver rendezvous] in {@link RendezvousServer}) when the fit has one, else
 * Spark's {@code BarrierTaskContext.allGather} (~1 s per call in Spark 4.1). Close it when the task ends.
 */
public final class SparkWorkerContext implements WorkerContext, AutoCloseable {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(SparkWorkerContext.class);
  private final BarrierTaskContext ctx;
  private final String token;
  private final String[] gpuAddresses; // the GPUs Spark assigned to this task; empty: none
  private final RendezvousEndpoint rendezvous; // null: Spark's allGather
  private final Duration gatherTimeout;
  private RendezvousClient client; // connected on the first allGather
  private GpuPlacement.Gpu gpu; // resolved on first use (CPU training never needs it)

  /** A context whose all-gathers use Spark's {@code BarrierTaskContext.allGather}. */
  public SparkWorkerContext(BarrierTaskContext ctx, String token) {
    this(ctx, token, null, Duration.ofMinutes(5));
  }

  /**
   * A context whose all-gathers meet at {@code rendezvous} (null: Spark's allGather) and fail when not every
   * rank arrives within {@code gatherTimeout}.
   */
  public SparkWorkerContext(BarrierTaskContext ctx, String token, RendezvousEndpoint rendezvous,
      Duration gatherTimeout) {
    this.ctx = ctx;
    this.token = token;
    this.rendezvous = rendezvous;
    this.gatherTimeout = gatherTimeout;
    ResourceInformation ri = ctx.resourcesJMap().get("gpu");
    this.gpuAddresses = ri == null ? new String[0] : ri.addresses();
  }

  /**
   * The GPU Spark assigned to this task, mapped to a CUDA device (Note [GPU address -> CUDA device] in
   * {@link GpuPlacement}), or null when it has none (local mode, CPU clusters).
   */
  private GpuPlacement.Gpu assignedGpu() {
    if (gpuAddresses.length == 0) {
      return null;
    }
    if (gpu == null) {
      if (gpuAddresses.length > 1) {
        throw new IllegalStateException("task got " + gpuAddresses.length + " GPUs " + Arrays.toString(gpuAddresses)
            + "; the training stage needs exactly one per task (spark.task.resource.gpu.amount=1)");
      }
      String visible = System.getenv("CUDA_VISIBLE_DEVICES");
      gpu = GpuPlacement.resolve(gpuAddresses[0], visible);
      LOG.info("rank " + rank() + " on " + host() + ": Spark's GPU address " + gpuAddresses[0] + " -> CUDA device "
          + gpu.ordinal() + (visible == null ? "" : " (CUDA_VISIBLE_DEVICES=" + visible + ")"));
    }
    return gpu;
  }

  /** "physical GPU@host" of this task's Spark-assigned GPU, for {@link GpuPlacement#check}; "" when it has none. */
  String gpuPlacementKey() {
    GpuPlacement.Gpu g = assignedGpu();
    return g == null ? "" : GpuPlacement.key(g.physical(), host());
  }

  @Override
  public int rank() {
    return ctx.partitionId();
  }

  @Override
  public int worldSize() {
    return ctx.getTaskInfos().length;
  }

  /** The CUDA ordinal of the GPU Spark assigned to this task, or -1 when it has none. */
  @Override
  public int gpu() {
    GpuPlacement.Gpu g = assignedGpu();
    return g == null ? -1 : g.ordinal();
  }

  @Override
  public List<String> allGather(String message) {
    if (rendezvous == null) {
      return Arrays.asList(ctx.allGather(message));
    }
    if (client == null) {
      client = RendezvousClient.connect(rendezvous, rank(), worldSize(), ctx.stageAttemptNumber());
    }
    return client.allGather(message, gatherTimeout, ctx::isInterrupted);
  }

  /** Closes the connection to the driver's rendezvous, if one was opened. Idempotent. */
  @Override
  public void close() {
    if (client != null) {
      client.close();
      client = null;
    }
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
