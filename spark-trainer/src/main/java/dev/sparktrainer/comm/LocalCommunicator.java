package dev.sparktrainer.comm;

import dev.sparktrainer.engine.Tensor;

/** The communicator of a single-rank job: every collective is the identity. */
public final class LocalCommunicator implements Communicator {
  @Override
  public int rank() {
    return 0;
  }

  @Override
  public int worldSize() {
    return 1;
  }

  @Override
  public void allReduceSum(Tensor buf) {}

  @Override
  public void broadcast(Tensor buf, int root) {
    if (root != 0) {
      throw new IllegalArgumentException("broadcast root " + root + " does not exist in a world of 1");
    }
  }

  @Override
  public void abort() {}

  @Override
  public void close() {}
}
