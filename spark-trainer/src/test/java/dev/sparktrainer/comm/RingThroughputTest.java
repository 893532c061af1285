package dev.sparktrainer.comm;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.cpu.CpuTensor;
import dev.sparktrainer.engine.DType;
import java.net.InetAddress;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;

/**
 * All-reduce throughput on loopback (a measurement, not a check: it asserts only the result). Run with
 * {@code -Dring.bench=true} (optionally {@code -Dring.bench.world=4}); prints, per size and socket buffer
 * setting, the best of several interleaved rounds (the least disturbed by other processes): time per
 * all-reduce, algorithm bandwidth (buffer bytes / time) and bus bandwidth (algbw * 2(W-1)/W, what each
 * rank's link carries each way).
 */
@EnabledIfSystemProperty(named = "ring.bench", matches = "true")
class RingThroughputTest {

  @Test
  @Timeout(value = 590, unit = TimeUnit.SECONDS)
  void allReduceThroughputOnLoopback() {
    int world = Integer.getInteger("ring.bench.world", 2);
    int rounds = Integer.getInteger("ring.bench.rounds", 3);
    int[] buffers = {0, 1 << 20, 4 << 20};
    int[] mibs = {4, 64};
    double[][] best = new double[buffers.length][mibs.length];
    for (double[] b : best) {
      Arrays.fill(b, Double.MAX_VALUE);
    }
    for (int round = 0; round < rounds; round++) {
      for (int bi = 0; bi < buffers.length; bi++) {
        int bufBytes = buffers[bi];
        for (int mi = 0; mi < mibs.length; mi++) {
          int n = mibs[mi] << 18;
          List<Double> secs = LocalLauncher.run(world, 0, 300, ctx -> {
            try (CpuDevice d = new CpuDevice();
                RingCommunicator comm = RingCommunicator.builder(ctx).optTimeout(Duration.ofSeconds(60))
                    .optBindAddress(InetAddress.getLoopbackAddress()).optSocketBufferBytes(bufBytes).build()) {
              CpuTensor t = d.allocate(DType.FLOAT32, n);
              int iters = Math.max(4, (512 << 20) / (n * 4)); // about 512 MiB per measurement
              for (int i = 0; i < 2; i++) {
                comm.allReduceSum(t);
              }
              double b = Double.MAX_VALUE;
              for (int rep = 0; rep < 3; rep++) {
                Arrays.fill(t.floats(), 0f);
                long t0 = System.nanoTime();
                for (int i = 0; i < iters; i++) {
                  comm.allReduceSum(t);
                }
                b = Math.min(b, (System.nanoTime() - t0) / 1e9 / iters);
              }
              Arrays.fill(t.floats(), 1f);
              comm.allReduceSum(t);
              assertEquals(world, t.floats()[n - 1]);
              return b;
            }
          });
          double s = secs.stream().mapToDouble(Double::doubleValue).max().orElseThrow();
          best[bi][mi] = Math.min(best[bi][mi], s);
        }
      }
    }
    for (int bi = 0; bi < buffers.length; bi++) {
      for (int mi = 0; mi < mibs.length; mi++) {
        double s = best[bi][mi];
        double algbw = (double) (mibs[mi] << 20) / s / 1e9;
        System.out.printf("ring all-reduce W=%d %3d MiB, socket buffers %-10s: %7.2f ms, algbw %.2f GB/s, "
            + "busbw %.2f GB/s%n", world, mibs[mi], buffers[bi] == 0 ? "OS default" : (buffers[bi] >> 20) + " MiB",
            s * 1e3, algbw, algbw * 2 * (world - 1) / world);
      }
    }
  }
}
