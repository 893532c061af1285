package dev.sparktrainer.cuda;

import dev.sparktrainer.comm.WorkerContext;

/**
 * Which GPU a rank uses. Rule: the GPU named by the worker context (in Spark, the address Spark assigned to
 * the task through its resources, e.g. {@code TaskContext.resources().get("gpu")}) when there is one;
 * otherwise (local mode without GPU resources) {@code rank % deviceCount}, with a log line saying so, since
 * two jobs placed this way on one host can share a GPU.
 */
public final class GpuSelector {
  private static final System.Logger LOG = System.getLogger(GpuSelector.class.getName());

  private GpuSelector() {}

  /** The device ordinal for {@code ctx} among the visible CUDA devices. */
  public static int select(WorkerContext ctx) {
    int count = Cuda.deviceCount();
    if (count <= 0) {
      throw new IllegalStateException("rank " + ctx.rank() + ": no CUDA device is visible: "
          + Cuda.availability().reason());
    }
    return select(ctx.gpu(), ctx.rank(), count);
  }

  /**
   * The rule itself, without touching CUDA.
   *
   * @param assigned the GPU from the task's resources, or -1 when there is none
   * @param rank this worker's rank
   * @param deviceCount the number of visible CUDA devices
   * @throws IllegalStateException when no device is visible or the assigned one does not exist
   */
  public static int select(int assigned, int rank, int deviceCount) {
    if (deviceCount <= 0) {
      throw new IllegalStateException("rank " + rank + ": no CUDA device is visible (driver missing,"
          + " CUDA_VISIBLE_DEVICES empty, or the task got no GPU)");
    }
    if (assigned >= 0) {
      if (assigned >= deviceCount) {
        throw new IllegalStateException("rank " + rank + " was assigned GPU " + assigned + " but only "
            + deviceCount + " device(s) are visible (ordinals 0.." + (deviceCount - 1) + "). If"
            + " CUDA_VISIBLE_DEVICES is set, Spark's GPU addresses must be ordinals within it: check the GPU"
            + " discovery script and spark.executor.resource.gpu.amount.");
      }
      return assigned;
    }
    int gpu = Math.floorMod(rank, deviceCount);
    LOG.log(System.Logger.Level.INFO, "rank {0}: no GPU assigned by the task resources; using rank % device"
        + " count = {1} of {2} visible device(s)", rank, gpu, deviceCount);
    return gpu;
  }
}
