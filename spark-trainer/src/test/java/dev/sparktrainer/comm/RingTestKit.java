package dev.sparktrainer.comm;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cpu.CpuTensor;
import dev.sparktrainer.engine.DType;
import java.net.InetAddress;
import java.time.Duration;
import java.util.Arrays;
import java.util.SplittableRandom;

/** Helpers shared by the ring tests. */
final class RingTestKit {
  private RingTestKit() {}

  /** A ring on loopback. */
  static RingCommunicator open(WorkerContext ctx, Duration timeout) {
    return RingCommunicator.builder(ctx).optTimeout(timeout).optBindAddress(InetAddress.getLoopbackAddress())
        .build();
  }

  /** Rank r's input of n floats in [-1, 1), a different stream per (seed, rank). */
  static float[] input(long seed, int rank, int n) {
    SplittableRandom rnd = new SplittableRandom(seed * 1_000_003L + rank);
    float[] x = new float[n];
    for (int i = 0; i < n; i++) {
      x[i] = (float) (rnd.nextDouble() * 2 - 1);
    }
    return x;
  }

  /** A view of n floats 3 elements into an allocation of n + 7, the margins filled with a sentinel. */
  static CpuTensor viewWith(CpuDevice d, float[] values) {
    int n = values.length;
    CpuTensor all = d.allocate(DType.FLOAT32, n + 7);
    Arrays.fill(all.floats(), 12345f);
    CpuTensor v = all.view(3, n);
    System.arraycopy(values, 0, v.floats(), v.offset(), n);
    return v;
  }

  /** The view's elements; checks that the margins around it were not touched. */
  static float[] contents(CpuTensor v) {
    float[] f = v.floats();
    for (int i = 0; i < v.offset(); i++) {
      if (f[i] != 12345f) {
        throw new AssertionError("element " + i + " before the view was overwritten");
      }
    }
    for (int i = v.offset() + v.size(); i < f.length; i++) {
      if (f[i] != 12345f) {
        throw new AssertionError("element " + i + " after the view was overwritten");
      }
    }
    return Arrays.copyOfRange(f, v.offset(), v.offset() + v.size());
  }
}
