package dev.sparktrainer.comm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cpu.CpuTensor;
import dev.sparktrainer.engine.DType;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Correctness of the ring's collectives: sums, identical bits on every rank, broadcast, W = 1, misuse. */
class RingCommunicatorTest {
  static final int[] SIZES = {1, 2, 3, 7, 1000, 1_000_003};
  static final Duration TIMEOUT = Duration.ofSeconds(30);

  /** Every rank's results of allReduceSum over SIZES (then SIZES[0..2] again), in order. */
  static List<List<float[]>> allReduceAll(int world, long seed) {
    return LocalLauncher.run(world, 0, 120, ctx -> {
      List<float[]> out = new ArrayList<>();
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, TIMEOUT)) {
        assertEquals(ctx.rank(), comm.rank());
        assertEquals(world, comm.worldSize());
        for (int rep = 0; rep < 2; rep++) {
          for (int i = 0; i < (rep == 0 ? SIZES.length : 3); i++) {
            CpuTensor t = RingTestKit.viewWith(d, RingTestKit.input(seed + i, ctx.rank(), SIZES[i]));
            comm.allReduceSum(t);
            out.add(RingTestKit.contents(t));
          }
        }
      }
      return out;
    });
  }

  @ParameterizedTest(name = "W={0}")
  @ValueSource(ints = {2, 3, 4})
  @Timeout(value = 180, unit = TimeUnit.SECONDS)
  void allReduceSumsAndEveryRankHasTheSameBits(int world) {
    long seed = 42;
    List<List<float[]>> results = allReduceAll(world, seed);
    for (int call = 0; call < SIZES.length + 3; call++) {
      int i = call < SIZES.length ? call : call - SIZES.length;
      int n = SIZES[i];
      double[] expected = new double[n];
      for (int r = 0; r < world; r++) {
        float[] x = RingTestKit.input(seed + i, r, n);
        for (int j = 0; j < n; j++) {
          expected[j] += x[j];
        }
      }
      float[] rank0 = results.get(0).get(call);
      assertEquals(n, rank0.length);
      for (int j = 0; j < n; j++) {
        if (Math.abs(rank0[j] - expected[j]) > 1e-5) {
          throw new AssertionError("W=" + world + " n=" + n + " element " + j + ": " + rank0[j] + " != "
              + expected[j]);
        }
      }
      for (int r = 1; r < world; r++) {
        assertArrayEquals(rank0, results.get(r).get(call), "W=" + world + " n=" + n + ": rank " + r
            + " ended with other bits than rank 0");
      }
    }
    // The same input again on the same communicator gives the same bits.
    for (int i = 0; i < 3; i++) {
      assertArrayEquals(results.get(0).get(i), results.get(0).get(SIZES.length + i), "repeat of n=" + SIZES[i]);
    }
  }

  @Test
  @Timeout(value = 180, unit = TimeUnit.SECONDS)
  void allReduceIsBitwiseReproducibleRunToRun() {
    List<List<float[]>> a = allReduceAll(3, 7);
    List<List<float[]>> b = allReduceAll(3, 7);
    for (int call = 0; call < a.get(0).size(); call++) {
      assertArrayEquals(a.get(0).get(call), b.get(0).get(call), "call " + call + " differs between runs");
    }
  }

  @ParameterizedTest(name = "W={0}")
  @ValueSource(ints = {2, 3, 4})
  @Timeout(value = 120, unit = TimeUnit.SECONDS)
  void broadcastFromEveryRoot(int world) {
    int[] sizes = {1, 3, 1000, 1_000_003};
    List<Boolean> ok = LocalLauncher.run(world, 0, 100, ctx -> {
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, TIMEOUT)) {
        for (int root = 0; root < world; root++) {
          for (int n : sizes) {
            CpuTensor t = RingTestKit.viewWith(d, RingTestKit.input(root * 31L + n, ctx.rank(), n));
            comm.broadcast(t, root);
            float[] want = RingTestKit.input(root * 31L + n, root, n);
            assertArrayEquals(want, RingTestKit.contents(t), "rank " + ctx.rank() + ": broadcast of " + n
                + " floats from root " + root);
          }
        }
        assertThrows(IllegalArgumentException.class, () -> comm.broadcast(d.allocate(DType.FLOAT32, 4), world));
      }
      return true;
    });
    assertEquals(world, ok.size());
  }

  @Test
  @Timeout(value = 30, unit = TimeUnit.SECONDS)
  void worldOfOneIsTheIdentityWithoutSockets() {
    LocalLauncher.run(1, 0, 20, ctx -> {
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, TIMEOUT)) {
        assertEquals(1, comm.worldSize());
        float[] x = RingTestKit.input(1, 0, 1000);
        CpuTensor t = RingTestKit.viewWith(d, x);
        comm.allReduceSum(t);
        assertArrayEquals(x, RingTestKit.contents(t));
        comm.broadcast(t, 0);
        assertArrayEquals(x, RingTestKit.contents(t));
        assertThrows(IllegalArgumentException.class, () -> comm.broadcast(t, 1));
      }
      return null;
    });
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void closeIsIdempotentAndLaterCallsThrow() {
    LocalLauncher.run(2, 0, 50, ctx -> {
      try (CpuDevice d = new CpuDevice()) {
        RingCommunicator comm = RingCommunicator.create(ctx, TIMEOUT); // the default bind address
        CpuTensor ints = d.allocate(DType.INT32, 4);
        assertThrows(IllegalArgumentException.class, () -> comm.allReduceSum(ints));
        CpuTensor t = d.allocate(DType.FLOAT32, 10);
        comm.allReduceSum(t);
        comm.close();
        comm.close();
        comm.abort();
        assertThrows(IllegalStateException.class, () -> comm.allReduceSum(t));
        assertThrows(IllegalStateException.class, () -> comm.broadcast(t, 0));
      }
      return null;
    });
  }

  @Test
  @Timeout(value = 60, unit = TimeUnit.SECONDS)
  void differentSizesOnDifferentRanksFailWithAClearMessage() {
    List<String> messages = LocalLauncher.run(2, 0, 50, ctx -> {
      try (CpuDevice d = new CpuDevice(); RingCommunicator comm = RingTestKit.open(ctx, TIMEOUT)) {
        CpuTensor t = d.allocate(DType.FLOAT32, ctx.rank() == 0 ? 100 : 200);
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t));
        assertThrows(CommunicatorException.class, () -> comm.allReduceSum(t), "a failed ring stays failed");
        return e.getMessage();
      }
    });
    for (String m : messages) {
      assertTrue(m.contains("same sizes"), m);
    }
  }
}
