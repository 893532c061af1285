package dev.sparktrainer.cuda;

import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.data.FashionMnist;
import java.nio.file.Path;

/**
 * Measures the CPU reference accuracy of {@link CudaFashionMnistTest}'s MLP on the development machine
 * (the GPU machine's time is scarce) and prints {@code sparktrainer.cpu.accuracy=...}; the GPU run passes
 * it back as a system property. Usage: {@code java -cp ... dev.sparktrainer.cuda.CudaCpuBaseline [dir]}.
 */
public final class CudaCpuBaseline {
  private CudaCpuBaseline() {}

  public static void main(String[] args) throws Exception {
    Path dir = args.length > 0 ? Path.of(args[0]) : FashionMnist.DEFAULT_DIR;
    CudaFashionMnistTest.train = FashionMnist.train(dir);
    CudaFashionMnistTest.test = FashionMnist.test(dir);
    long t0 = System.nanoTime();
    try (CpuDevice cpu = new CpuDevice()) {
      double acc = CudaFashionMnistTest.train(cpu, new LocalCommunicator(), 128, 3, null).accuracy();
      System.out.printf("# CPU (%s) 3 epochs in %.0f s%n", cpu.blasName(), (System.nanoTime() - t0) / 1e9);
      System.out.println("sparktrainer.cpu.accuracy=" + acc);
    }
  }
}
