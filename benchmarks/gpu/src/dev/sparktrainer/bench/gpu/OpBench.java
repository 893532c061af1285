package dev.sparktrainer.bench.gpu;

import dev.sparktrainer.cuda.CudaDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import java.util.Locale;

/**
 * Bandwidth of the memory-bound CNN ops on one GPU (a diagnostic for benchmarks/README.md, not a comparison):
 * batch norm forward / backward (with and without the fused ReLU), the residual add and the ReLU backward, in
 * bf16 channels-last at ResNet-50's shapes (batch 256), timed over 20 calls after 3 warm-up calls, reported as
 * milliseconds per call and GB/s of the bytes the op must move at least.
 *
 * <p>Run: {@code java -cp <jars> dev.sparktrainer.bench.gpu.OpBench [batch]}.
 */
public final class OpBench {
  private OpBench() {}

  public static void main(String[] args) {
    int n = args.length > 0 ? Integer.parseInt(args[0]) : 256;
    int[][] shapes = {{64, 112, 112}, {256, 56, 56}, {64, 56, 56}, {512, 28, 28}, {1024, 14, 14}, {2048, 7, 7}};
    try (CudaDevice d = new CudaDevice(0)) {
      for (int[] s : shapes) {
        int c = s[0];
        int[] shape = {n, c, s[1], s[2]};
        Tensor x = d.allocate(DType.BFLOAT16, shape);
        Tensor y = d.allocate(DType.BFLOAT16, shape);
        Tensor dy = d.allocate(DType.BFLOAT16, shape);
        Tensor dx = d.allocate(DType.BFLOAT16, shape);
        for (Tensor t : new Tensor[] {x, y, dy, dx}) {
          d.markChannelsLast(t, true);
        }
        d.fill(x, 0.5f);
        d.fill(dy, 0.25f);
        Tensor[] pc = new Tensor[8];
        for (int k = 0; k < pc.length; k++) {
          pc[k] = d.allocate(DType.FLOAT32, c);
          d.fill(pc[k], k == 0 ? 1f : 0f);
        }
        long elems = x.numel();
        String tag = String.format(Locale.ROOT, "(%d, %d, %d, %d) NHWC bf16", n, c, s[1], s[2]);
        report(d, tag + " bn forward + relu", 6.0 * elems, () -> d.batchNormForwardTraining(x, pc[0], pc[1], y, pc[2],
            pc[3], 0.1f, 1e-5f, pc[4], pc[5], true));
        report(d, tag + " bn backward", 10.0 * elems, () -> d.batchNormBackward(x, dy, pc[0], pc[4], pc[5], dx,
            pc[6], pc[7]));
        report(d, tag + " bn backward + relu", 10.0 * elems, () -> d.batchNormBackwardRelu(x, y, dy, pc[0], pc[1],
            pc[4], pc[5], dx, pc[6], pc[7]));
        report(d, tag + " add + relu", 6.0 * elems, () -> d.add(x, dy, y, true));
        report(d, tag + " relu backward", 6.0 * elems, () -> d.reluBackward(x, dy, dx));
        for (Tensor t : new Tensor[] {x, y, dy, dx}) {
          ((dev.sparktrainer.cuda.CudaTensor) t).buffer().close();
        }
      }
    }
  }

  private static void report(CudaDevice d, String what, double bytes, Runnable op) {
    for (int k = 0; k < 3; k++) {
      op.run();
    }
    d.synchronize();
    int calls = 20;
    long t0 = System.nanoTime();
    for (int k = 0; k < calls; k++) {
      op.run();
    }
    d.synchronize();
    double ms = (System.nanoTime() - t0) / 1e6 / calls;
    System.out.printf(Locale.ROOT, "[op-bench] %-60s %8.3f ms  %7.0f GB/s%n", what, ms, bytes / ms / 1e6);
  }
}
