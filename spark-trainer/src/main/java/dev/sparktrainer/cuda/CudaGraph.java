package dev.sparktrainer.cuda;

import dev.sparktrainer.engine.StepGraph;
import jcuda.driver.CUgraph;
import jcuda.driver.CUgraphExec;

/**
 * A CUDA graph captured from the compute stream of one {@link CudaDevice} ({@link CudaDevice#captureGraph}):
 * the captured graph, its executable instance, and the device state the capture depended on, which {@link
 * #replay()} checks before launching it on the compute stream (Note [CUDA graphs] in train.Trainer). Owned by
 * whoever captured it; the device closes the ones still open when it closes.
 */
final class CudaGraph implements StepGraph {
  final CudaDevice device;
  final CUgraph graph;
  final CUgraphExec exec;
  /** The device's count of freed allocations at the capture: a later free may have taken memory the graph uses. */
  final long freesAtCapture;
  /** The bf16 mirror registered at the capture (Note [bf16 mirror of the parameters]), or null. */
  final CudaTensor mirrorSrc;
  final CudaTensor mirrorDst;
  /** The capture skipped a refreshMirror because the mirror was current: a replay needs it current too. */
  final boolean needsFreshMirror;
  /** The capture refreshed the mirror itself (so a replay leaves it as the capture did, whatever it was). */
  final boolean refreshesMirror;
  /** Whether the mirror was current when the capture ended. */
  final boolean mirrorFreshAfter;
  private volatile boolean closed;
  private boolean reportedStale;

  CudaGraph(CudaDevice device, CUgraph graph, CUgraphExec exec, long freesAtCapture, CudaTensor mirrorSrc,
      CudaTensor mirrorDst, boolean needsFreshMirror, boolean refreshesMirror, boolean mirrorFreshAfter) {
    this.device = device;
    this.graph = graph;
    this.exec = exec;
    this.freesAtCapture = freesAtCapture;
    this.mirrorSrc = mirrorSrc;
    this.mirrorDst = mirrorDst;
    this.needsFreshMirror = needsFreshMirror;
    this.refreshesMirror = refreshesMirror;
    this.mirrorFreshAfter = mirrorFreshAfter;
  }

  @Override
  public boolean replay() {
    if (closed) {
      throw new IllegalStateException("this CUDA graph of " + device.name() + " is closed");
    }
    return device.replayGraph(this);
  }

  /** Whether this is the first time the graph could not be replayed (the device logs the reason once). */
  boolean firstStale() {
    boolean first = !reportedStale;
    reportedStale = true;
    return first;
  }

  boolean isClosed() {
    return closed;
  }

  /** Destroys the executable graph and the graph (an in-flight launch completes first). Idempotent. */
  @Override
  public void close() {
    if (!closed) {
      closed = true;
      device.destroyGraph(this);
    }
  }

  @Override
  public String toString() {
    return "CudaGraph[" + device.name() + (closed ? ", closed" : "") + "]";
  }
}
