import dev.sparktrainer.engine.Bf16;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Host cost of staging a bf16 input batch (Note [bf16 input on the loader threads] in data.BatchLoader), on the
 * development machine (2 cores, JDK 17), the Fashion-MNIST CNN's batch (512 x 784 values):
 *   rounding on the trainer's thread, as CudaDevice.prefetch(float[]) does into a BFLOAT16 slot (putShort per value),
 *   the same rounding into a short[] (what a loader thread now does, off the trainer's thread),
 *   the bulk copy of rounded values into the pinned slot (what CudaDevice.prefetchBf16 does on the trainer's thread).
 * Run: javac -cp spark-trainer/target-lead/classes -d /tmp/bs Bf16Staging.java
 *      java -cp spark-trainer/target-lead/classes:/tmp/bs Bf16Staging
 */
public class Bf16Staging {
  public static void main(String[] a) {
    int n = 512 * 784;
    float[] src = new float[n];
    for (int i = 0; i < n; i++) {
      src[i] = (float) Math.sin(i);
    }
    ByteBuffer slot = ByteBuffer.allocateDirect(2 * n).order(ByteOrder.nativeOrder());
    short[] rounded = new short[n];
    int reps = 300;
    for (int round = 0; round < 4; round++) {
      long t0 = System.nanoTime();
      for (int r = 0; r < reps; r++) {
        ByteBuffer b = slot.duplicate().order(slot.order());
        for (int i = 0; i < n; i++) {
          b.putShort(i * 2, Bf16.bits(src[i]));
        }
      }
      long t1 = System.nanoTime();
      for (int r = 0; r < reps; r++) {
        Bf16.bits(src, 0, rounded, 0, n);
      }
      long t2 = System.nanoTime();
      for (int r = 0; r < reps; r++) {
        slot.duplicate().order(slot.order()).asShortBuffer().put(rounded, 0, n);
      }
      long t3 = System.nanoTime();
      System.out.printf("round %d: trainer-thread rounding %.0f us; loader rounding %.0f us; trainer-thread bulk copy"
          + " %.0f us%n", round, (t1 - t0) / 1e3 / reps, (t2 - t1) / 1e3 / reps, (t3 - t2) / 1e3 / reps);
    }
  }
}
