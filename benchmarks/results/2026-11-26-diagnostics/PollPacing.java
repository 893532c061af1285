// A CPU model of NcclCommunicator's host waits (Note [poll pacing]): the condition is ready D us after the wait starts;
// each poll costs ~0.3 us (the JNI query). Prints how late the old pacing (200 spins, then parkNanos(2 us x n,
// <= 50 us)) and the new one (spin for 200 us, then park <= 50 us) see it. Run: java PollPacing.java
import java.util.concurrent.locks.LockSupport;
public class PollPacing {
  static void oldPause(long spins) {
    if (spins < 200) Thread.onSpinWait(); else LockSupport.parkNanos(Math.min(50_000L, 2_000L * (spins - 199)));
  }
  static void newPause(long start) {
    long w = System.nanoTime() - start;
    if (w < 200_000) Thread.onSpinWait(); else LockSupport.parkNanos(Math.min(50_000L, 2_000L + (w - 200_000) / 20));
  }
  // condition: true once D ns have passed since t0 (stands for "NCCL has taken the call" / "the event is done");
  // each poll also costs ~0.3 us (stands for the JNI query)
  static long wait(long d, boolean neu) {
    long t0 = System.nanoTime();
    long spins = 0;
    while (true) {
      long now = System.nanoTime();
      long burn = now + 300; while (System.nanoTime() < burn) { }
      if (now - t0 >= d) return System.nanoTime() - t0 - d;
      if (neu) newPause(t0); else oldPause(spins++);
    }
  }
  public static void main(String[] a) {
    for (long d : new long[] {20_000, 50_000, 100_000, 150_000, 400_000, 2_000_000}) {
      for (boolean neu : new boolean[] {false, true}) {
        long[] t = new long[400];
        for (int i = 0; i < t.length; i++) t[i] = wait(d, neu);
        java.util.Arrays.sort(t);
        System.out.printf("ready after %4d us, %s policy: late by p50 %.1f us, p90 %.1f us%n", d / 1000, neu ? "new" : "old", t[200] / 1e3, t[360] / 1e3);
      }
    }
  }
}
