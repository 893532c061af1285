package dev.sparktrainer.cuda;

import static dev.sparktrainer.cuda.CudaTestSupport.host;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.comm.CommunicatorException;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.WorkerContext;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.time.Duration;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.BiFunction;
import org.junit.jupiter.api.Test;

/**
 * The NCCL communicator on 2 GPUs, one worker thread per rank through {@link LocalLauncher}: collectives are
 * correct from 1 element to 1 GiB (odd sizes included), and a peer that aborts or stalls makes the other
 * rank fail within the timeout instead of hanging.
 */
class CudaNcclTest {
  static final int WORLD = 2;

  static <T> List<T> onRanks(Duration timeout, BiFunction<WorkerContext, NcclCommunicator, T> body) {
    return LocalLauncher.run(WORLD, Cuda.deviceCount(), 300, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, timeout)) {
        return body.apply(ctx, c);
      }
    });
  }

  static float[] rankData(int n, int rank) {
    SplittableRandom r = new SplittableRandom(1000L * n + rank);
    float[] a = new float[n];
    for (int i = 0; i < n; i++) {
      a[i] = (float) (r.nextInt(2001) - 1000) / 8f; // exact in fp32 and in sums of two
    }
    return a;
  }

  @Test
  void allReduceIsExactFromOneElementToSeveralMillion() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    int[] sizes = {1, 2, 7, 1023, 65537, (1 << 20) + 3, 10_000_019};
    List<String> ok = onRanks(Duration.ofSeconds(60), (ctx, c) -> {
      CudaDevice d = c.device();
      for (int n : sizes) {
        Tensor t = d.allocate(DType.FLOAT32, n);
        d.upload(rankData(n, ctx.rank()), 0, t);
        c.allReduceSum(t);
        float[] got = host(d, t);
        float[] a = rankData(n, 0);
        float[] b = rankData(n, 1);
        for (int i = 0; i < n; i++) {
          if (got[i] != a[i] + b[i]) {
            throw new AssertionError("rank " + ctx.rank() + " n=" + n + " element " + i + ": " + got[i] + " != "
                + (a[i] + b[i]));
          }
        }
        t.device(); // keep
        ((CudaTensor) t).buffer().close();
      }
      // bf16 all-reduce (small integers are exact in bf16)
      Tensor h = d.allocate(DType.BFLOAT16, 4099);
      d.fill(h, ctx.rank() + 1f);
      c.allReduceSum(h);
      for (float v : host(d, h)) {
        if (v != 3f) {
          throw new AssertionError("bf16 all-reduce gave " + v);
        }
      }
      return "ok";
    });
    assertEquals(List.of("ok", "ok"), ok);
    CudaTestLog.note("NCCL allReduceSum exact for sizes " + java.util.Arrays.toString(sizes) + " (fp32) and 4099 (bf16)");
  }

  @Test
  void allReduceOfOneGibPerRank() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    long n = (1L << 28) - 1; // 1 GiB of fp32 less one element: odd on purpose
    List<double[]> res = onRanks(Duration.ofSeconds(120), (ctx, c) -> {
      CudaDevice d = c.device();
      Tensor t = d.allocate(DType.FLOAT32, (int) n);
      d.fill(t, ctx.rank() + 1f);
      c.allReduceSum(t); // warm-up
      d.fill(t, ctx.rank() + 1f);
      d.synchronize();
      long t0 = System.nanoTime();
      c.allReduceSum(t);
      double seconds = (System.nanoTime() - t0) / 1e9;
      double sum = d.sum(t);
      double sumSq = d.sumSquares(t);
      float[] head = new float[1000];
      d.download(t.view(0, 1000), head, 0);
      float[] tail = new float[1000];
      d.download(t.view(n - 1000, 1000), tail, 0);
      for (int i = 0; i < 1000; i++) {
        if (head[i] != 3f || tail[i] != 3f) {
          throw new AssertionError("1 GiB all-reduce: wrong value at the ends");
        }
      }
      return new double[] {sum, sumSq, seconds};
    });
    for (double[] r : res) {
      assertEquals(3.0 * n, r[0], 0);
      assertEquals(9.0 * n, r[1], 0);
    }
    double bytes = n * 4.0;
    double busBw = bytes * 2 * (WORLD - 1) / WORLD / res.get(0)[2] / 1e9;
    CudaTestLog.note(String.format("NCCL allReduceSum of 1 GiB (%d floats) on %d GPUs: correct; %.1f ms,"
        + " bus bandwidth %.0f GB/s (%s)", n, WORLD, res.get(0)[2] * 1e3, busBw, Cuda.deviceName(0)));
  }

  @Test
  void broadcastReduceScatterAllGatherAndGroups() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    List<String> ok = onRanks(Duration.ofSeconds(60), (ctx, c) -> {
      CudaDevice d = c.device();
      int r = ctx.rank();
      Tensor b = d.allocate(DType.FLOAT32, 12345);
      d.upload(rankData(12345, r), 0, b);
      c.broadcast(b, 1);
      assertArrayEquals(rankData(12345, 1), host(d, b), "broadcast from rank 1");
      int n = 1001;
      Tensor send = d.allocate(DType.FLOAT32, n * WORLD);
      d.upload(rankData(n * WORLD, r), 0, send);
      Tensor recv = d.allocate(DType.FLOAT32, n);
      c.reduceScatterSum(send, recv);
      float[] a = rankData(n * WORLD, 0);
      float[] bb = rankData(n * WORLD, 1);
      float[] got = host(d, recv);
      for (int i = 0; i < n; i++) {
        assertEquals(a[r * n + i] + bb[r * n + i], got[i], 0f, "reduceScatter");
      }
      Tensor gathered = d.allocate(DType.FLOAT32, n * WORLD);
      c.allGather(recv, gathered);
      float[] all = host(d, gathered);
      for (int i = 0; i < n * WORLD; i++) {
        assertEquals(a[i] + bb[i], all[i], 0f, "allGather");
      }
      Tensor g1 = d.allocate(DType.FLOAT32, 3);
      Tensor g2 = d.allocate(DType.FLOAT32, 70000);
      d.fill(g1, 1f + r);
      d.fill(g2, 10f * (1 + r));
      c.allReduceSumGrouped(List.of(g1, g2));
      assertEquals(9.0, d.sum(g1), 0);
      assertEquals(30.0 * 70000, d.sum(g2), 0);
      c.allReduceMean(g1);
      assertEquals(9.0, d.sum(g1), 0);
      return "ok";
    });
    assertEquals(List.of("ok", "ok"), ok);
  }

  /**
   * Note [blocking collectives]: the collectives on the blocking communicator split from the non-blocking one and
   * on the non-blocking one itself give the same sums, through every path the trainer uses (blocking, async on
   * the comm stream, in order on the compute stream, broadcast), sizes the warm-up did not use included.
   */
  @Test
  void blockingAndNonBlockingCollectivesGiveTheSameSums() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    int[] sizes = {3, 4099, (1 << 20) + 5, 9_000_001};
    for (boolean blocking : new boolean[] {true, false}) {
      List<String> ok = LocalLauncher.run(WORLD, Cuda.deviceCount(), 300, ctx -> {
        try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
            NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofSeconds(60), blocking)) {
          assertEquals(blocking, c.blockingCollectives());
          Tensor[] ts = new Tensor[sizes.length];
          for (int i = 0; i < sizes.length; i++) {
            ts[i] = d.allocate(DType.FLOAT32, sizes[i]);
            d.upload(rankData(sizes[i], ctx.rank()), 0, ts[i]);
          }
          c.allReduceSum(ts[0]);
          c.allReduceSumAsync(ts[1]);
          c.allReduceSumInOrder(ts[2]);
          c.allReduceSumAsync(ts[3]);
          c.awaitAsync();
          for (int i = 0; i < sizes.length; i++) {
            float[] got = host(d, ts[i]);
            float[] a = rankData(sizes[i], 0);
            float[] b = rankData(sizes[i], 1);
            for (int j = 0; j < got.length; j++) {
              if (got[j] != a[j] + b[j]) {
                throw new AssertionError("blocking=" + blocking + " rank " + ctx.rank() + " n=" + sizes[i]
                    + " element " + j + ": " + got[j] + " != " + (a[j] + b[j]));
              }
            }
          }
          // Note [bucket wait lag]: two joins, the older waited for alone, then the rest: sums of the sums.
          c.allReduceSumInOrder(ts[0]);
          c.joinAsync();
          c.allReduceSumAsync(ts[2]);
          c.joinAsync();
          c.awaitAsyncBefore(1);
          c.awaitAsync();
          for (int i : new int[] {0, 2}) {
            float[] got = host(d, ts[i]);
            float[] a = rankData(sizes[i], 0);
            float[] b = rankData(sizes[i], 1);
            for (int j = 0; j < got.length; j++) {
              if (got[j] != 2 * (a[j] + b[j])) {
                throw new AssertionError("lagged wait, blocking=" + blocking + " n=" + sizes[i] + " element " + j);
              }
            }
          }
          d.upload(rankData(sizes[1], ctx.rank()), 0, ts[1]);
          c.broadcast(ts[1], 1);
          assertArrayEquals(rankData(sizes[1], 1), host(d, ts[1]));
          return "ok";
        }
      });
      assertEquals(List.of("ok", "ok"), ok, "blocking=" + blocking);
    }
  }

  @Test
  void abortOnOneRankMakesTheOtherFailWithinTheTimeout() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    Duration timeout = Duration.ofSeconds(20);
    CountDownLatch rank0Done = new CountDownLatch(1);
    List<String> res = onRanks(timeout, (ctx, c) -> {
      Tensor t = c.device().allocate(DType.FLOAT32, 1 << 20);
      c.allReduceSum(t); // both ranks: the communicator works
      if (ctx.rank() == 1) {
        c.abort(); // rank 1 gives up and never joins the next collective
        try {
          rank0Done.await(60, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
        return "aborted";
      }
      long t0 = System.nanoTime();
      try {
        c.allReduceSum(t);
        return "rank 0 was not stopped";
      } catch (CommunicatorException e) {
        double s = (System.nanoTime() - t0) / 1e9;
        return String.format("failed after %.2f s: %s", s, e.getMessage());
      } finally {
        rank0Done.countDown();
      }
    });
    String r0 = res.get(0);
    CudaTestLog.note("abort on rank 1 -> rank 0 " + r0);
    assertTrue(r0.startsWith("failed after"), r0);
    double s = Double.parseDouble(r0.substring("failed after ".length(), r0.indexOf(" s:")));
    assertTrue(s <= timeout.toSeconds() + 5, "rank 0 must fail within the timeout, took " + s + " s");
  }

  @Test
  void aStalledPeerTimesOutAndAbortFromAnotherThreadUnblocks() {
    CudaTestSupport.assumeGpus(WORLD);
    CudaTestSupport.assumeJni();
    Duration timeout = Duration.ofSeconds(5);
    CountDownLatch rank0Done = new CountDownLatch(1);
    List<String> res = onRanks(timeout, (ctx, c) -> {
      Tensor t = c.device().allocate(DType.FLOAT32, 4096);
      c.allReduceSum(t);
      if (ctx.rank() == 1) { // stalls: issues nothing until rank 0 has given up
        try {
          rank0Done.await(60, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
        c.abort();
        return "stalled";
      }
      long t0 = System.nanoTime();
      try {
        c.allReduceSum(t);
        return "rank 0 was not stopped";
      } catch (CommunicatorException e) {
        return String.format("timed out after %.2f s: %s", (System.nanoTime() - t0) / 1e9, e.getMessage());
      } finally {
        rank0Done.countDown();
      }
    });
    String r0 = res.get(0);
    CudaTestLog.note("stalled rank 1 -> rank 0 " + r0);
    assertTrue(r0.startsWith("timed out after") && r0.contains("timed out after 5000 ms"), r0);
  }
}
