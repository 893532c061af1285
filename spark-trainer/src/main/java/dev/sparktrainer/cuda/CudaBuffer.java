package dev.sparktrainer.cuda;

/**
 * One device allocation owned by a {@link CudaArena}. Closing it frees the memory at once; closing the arena
 * frees whatever is still open. Reading the address of a closed buffer throws {@link IllegalStateException}
 * (use after close), so a tensor viewing freed memory fails loudly instead of corrupting another allocation.
 */
public final class CudaBuffer implements AutoCloseable {
  private final CudaArena arena;
  private final long address;
  private final long bytes;
  private final String label;
  private volatile boolean open = true;

  CudaBuffer(CudaArena arena, long address, long bytes, String label) {
    this.arena = arena;
    this.address = address;
    this.bytes = bytes;
    this.label = label;
  }

  /** The device address; throws {@link IllegalStateException} after close. */
  public long address() {
    if (!open) {
      throw new IllegalStateException("device buffer '" + label + "' (" + bytes + " bytes) of arena '"
          + arena.name() + "' was used after it was closed");
    }
    return address;
  }

  /** Size in bytes. */
  public long bytes() {
    return bytes;
  }

  /** What the buffer is for (shown in leak reports). */
  public String label() {
    return label;
  }

  /** The arena that owns this buffer. */
  public CudaArena arena() {
    return arena;
  }

  /** False once closed (directly or by the arena). */
  public boolean isOpen() {
    return open;
  }

  /** Marks the buffer closed; returns whether it was open. Called by the arena with its lock held. */
  boolean markClosed() {
    boolean was = open;
    open = false;
    return was;
  }

  long rawAddress() {
    return address;
  }

  /** Frees the memory now. Idempotent. */
  @Override
  public void close() {
    arena.release(this);
  }

  @Override
  public String toString() {
    return "CudaBuffer[" + label + ", " + bytes + " bytes" + (open ? "" : ", closed") + "]";
  }
}
