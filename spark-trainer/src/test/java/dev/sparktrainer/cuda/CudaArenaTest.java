package dev.sparktrainer.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The arena's ownership rules, on a fake allocator (runs without a GPU). */
class CudaArenaTest {
  /** Hands out fake addresses and remembers what is live. */
  static final class FakeAllocator implements DeviceAllocator {
    final Map<Long, Long> live = new HashMap<>();
    long next = 0x1000;
    int frees;

    @Override
    public long allocate(long bytes) {
      long a = next;
      next += bytes;
      live.put(a, bytes);
      return a;
    }

    @Override
    public void free(long address) {
      if (live.remove(address) == null) {
        throw new AssertionError("double free of " + address);
      }
      frees++;
    }
  }

  @Test
  void buffersAreFreedOnceAndAddressesFailAfterClose() {
    FakeAllocator fa = new FakeAllocator();
    CudaArena arena = new CudaArena("root", fa, false);
    CudaBuffer b = arena.allocate(10, "x");
    assertEquals(256, b.bytes(), "rounded up to 256 bytes");
    long addr = b.address();
    assertTrue(fa.live.containsKey(addr));
    b.close();
    b.close(); // idempotent
    assertEquals(1, fa.frees);
    IllegalStateException e = assertThrows(IllegalStateException.class, b::address);
    assertTrue(e.getMessage().contains("used after it was closed"), e.getMessage());
    arena.close();
    assertEquals(0, fa.live.size());
  }

  @Test
  void rootArenaFreesOpenBuffersSilentlyAndCloseIsIdempotent() {
    FakeAllocator fa = new FakeAllocator();
    CudaArena arena = new CudaArena("root", fa, false);
    CudaBuffer a = arena.allocate(1000, "a");
    arena.allocate(5000, "b");
    assertEquals(2, arena.openBuffers());
    arena.close();
    arena.close();
    assertTrue(arena.isClosed());
    assertEquals(0, fa.live.size());
    assertFalse(a.isOpen());
    assertThrows(IllegalStateException.class, () -> arena.allocate(1, "late"));
  }

  @Test
  void strictChildReportsLeaksByNameAndStillFreesThem() {
    FakeAllocator fa = new FakeAllocator();
    CudaArena root = new CudaArena("cuda:0", fa, false);
    CudaArena step = root.newChild("step");
    CudaBuffer ok = step.allocate(100, "returned");
    step.allocate(300, "activations(128, 256)");
    ok.close();
    IllegalStateException e = assertThrows(IllegalStateException.class, step::close);
    assertTrue(e.getMessage().contains("activations(128, 256) (512 bytes)"), e.getMessage());
    assertTrue(e.getMessage().contains("cuda:0/step"), e.getMessage());
    assertEquals(0, fa.live.size(), "leaked memory is freed anyway");
    step.close(); // idempotent, no second report
    root.close();
  }

  @Test
  void closingTheParentClosesChildrenAndSurfacesTheirLeaks() {
    FakeAllocator fa = new FakeAllocator();
    CudaArena root = new CudaArena("root", fa, false);
    root.allocate(64, "param");
    CudaArena child = root.newChild("scratch");
    child.allocate(64, "forgotten");
    IllegalStateException e = assertThrows(IllegalStateException.class, root::close);
    assertTrue(e.getMessage().contains("forgotten"), e.getMessage());
    assertTrue(child.isClosed());
    assertEquals(0, fa.live.size());
  }

  @Test
  void peakAndInUseAreTracked() {
    FakeAllocator fa = new FakeAllocator();
    try (CudaArena root = new CudaArena("root", fa, false)) {
      CudaBuffer a = root.allocate(256, "a");
      CudaBuffer b = root.allocate(512, "b");
      a.close();
      assertEquals(512, root.bytesInUse());
      assertEquals(768, root.peakBytes());
      b.close();
      assertEquals(0, root.bytesInUse());
    }
  }

  @Test
  void failedBookkeepingGivesTheMemoryBack() {
    FakeAllocator fa = new FakeAllocator();
    CudaArena root = new CudaArena("root", fa, false);
    assertThrows(IllegalArgumentException.class, () -> root.allocate(-1, "negative"));
    assertEquals(0, fa.live.size());
    root.close();
  }
}
