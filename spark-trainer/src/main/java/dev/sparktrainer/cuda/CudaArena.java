package dev.sparktrainer.cuda;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;

/**
 * Owns device memory, DJL/Arrow style: buffers allocated here are freed when the arena closes, and arenas
 * form a tree (closing a parent closes its children first).
 *
 * <p>A <em>strict</em> arena treats buffers still open at close as leaks: it frees them, then throws an
 * {@link IllegalStateException} naming each one (label and size). The root arena of a {@link CudaDevice} is
 * not strict, because {@link dev.sparktrainer.engine.Device#allocate} promises that the device frees its
 * tensors when it closes; scratch arenas made with {@link #newChild} are strict. Close is idempotent;
 * allocating from a closed arena throws {@link IllegalStateException}. Thread-safe.
 */
public final class CudaArena implements AutoCloseable {
  private final String name;
  private final CudaArena parent;
  private final DeviceAllocator allocator;
  private final boolean strict;
  private final Set<CudaBuffer> live = new LinkedHashSet<>();
  private final List<CudaArena> children = new ArrayList<>();
  private long bytesInUse;
  private long peakBytes;
  private boolean closed;

  /** A root arena over {@code allocator}. */
  public CudaArena(String name, DeviceAllocator allocator, boolean strict) {
    this(name, null, allocator, strict);
  }

  private CudaArena(String name, CudaArena parent, DeviceAllocator allocator, boolean strict) {
    this.name = name;
    this.parent = parent;
    this.allocator = allocator;
    this.strict = strict;
  }

  /** Name for messages. */
  public String name() {
    return name;
  }

  /** A strict child arena; closed with this one if not closed before. */
  public synchronized CudaArena newChild(String childName) {
    ensureOpen();
    CudaArena c = new CudaArena(name + "/" + childName, this, allocator, true);
    children.add(c);
    return c;
  }

  /**
   * Allocates {@code bytes} (at least 1; rounded up to 256 so every buffer suits vectorised access).
   * Exception-safe: if bookkeeping fails after the allocation, the memory is given back.
   */
  public synchronized CudaBuffer allocate(long bytes, String label) {
    ensureOpen();
    if (bytes < 0) {
      throw new IllegalArgumentException("cannot allocate " + bytes + " bytes");
    }
    long size = Math.max(256, (bytes + 255) / 256 * 256);
    long address = allocator.allocate(size);
    boolean done = false;
    try {
      CudaBuffer b = new CudaBuffer(this, address, size, label);
      live.add(b);
      bytesInUse += size;
      peakBytes = Math.max(peakBytes, bytesInUse);
      done = true;
      return b;
    } finally {
      if (!done) {
        allocator.free(address);
      }
    }
  }

  synchronized void release(CudaBuffer b) {
    if (b.markClosed()) {
      live.remove(b);
      bytesInUse -= b.bytes();
      allocator.free(b.rawAddress());
    }
  }

  /** Bytes held by open buffers of this arena (children not included). */
  public synchronized long bytesInUse() {
    return bytesInUse;
  }

  /** The most bytes this arena held at once. */
  public synchronized long peakBytes() {
    return peakBytes;
  }

  /** Number of open buffers of this arena (children not included). */
  public synchronized int openBuffers() {
    return live.size();
  }

  /** Whether close() has run. */
  public synchronized boolean isClosed() {
    return closed;
  }

  private void ensureOpen() {
    if (closed) {
      throw new IllegalStateException("arena '" + name + "' is closed");
    }
  }

  /**
   * Closes the children, then frees every open buffer. A strict arena (or a strict child) with open buffers
   * throws afterwards, naming the leaks; the memory is freed either way. Idempotent.
   */
  @Override
  public void close() {
    List<CudaArena> kids;
    synchronized (this) {
      if (closed) {
        return;
      }
      closed = true;
      kids = new ArrayList<>(children);
      children.clear();
    }
    IllegalStateException leak = null;
    for (CudaArena c : kids) {
      try {
        c.close();
      } catch (IllegalStateException e) {
        if (leak == null) {
          leak = e;
        } else {
          leak.addSuppressed(e);
        }
      }
    }
    List<String> leaks = new ArrayList<>();
    long leakedBytes = 0;
    RuntimeException freeFailure = null;
    synchronized (this) {
      for (CudaBuffer b : new ArrayList<>(live)) {
        leaks.add(b.label() + " (" + b.bytes() + " bytes)");
        leakedBytes += b.bytes();
        try {
          release(b);
        } catch (RuntimeException e) {
          if (freeFailure == null) {
            freeFailure = e;
          }
          b.markClosed();
          live.remove(b);
        }
      }
      live.clear();
      bytesInUse = 0;
    }
    if (parent != null) {
      parent.forget(this);
    }
    if (freeFailure != null) {
      if (leak != null) {
        freeFailure.addSuppressed(leak);
      }
      throw freeFailure;
    }
    if (strict && !leaks.isEmpty()) {
      IllegalStateException e = new IllegalStateException("arena '" + name + "' closed with " + leaks.size()
          + " buffer(s) still open (" + leakedBytes + " bytes; freed now): " + String.join(", ", leaks));
      if (leak != null) {
        e.addSuppressed(leak);
      }
      throw e;
    }
    if (leak != null) {
      throw leak;
    }
  }

  private synchronized void forget(CudaArena child) {
    children.remove(child);
  }

  @Override
  public String toString() {
    return "CudaArena[" + name + ", " + openBuffers() + " buffers, " + bytesInUse() + " bytes]";
  }
}
