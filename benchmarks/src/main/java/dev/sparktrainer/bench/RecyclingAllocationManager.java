package dev.sparktrainer.bench;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import org.apache.arrow.memory.AllocationManager;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.ReferenceManager;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.unsafe.Platform;

/**
 * Benchmark-only Arrow memory: blocks freed by Arrow are kept and handed out again for a request of the same
 * size, so a store built after the first one writes to memory the process already touched (no page faults),
 * as in an executor whose earlier task freed its memory. It never returns memory to the OS while the JVM
 * runs; {@link #rootAllocator()} is for measurements, not for the library.
 */
final class RecyclingAllocationManager extends AllocationManager {
  private static final Map<Long, ArrayDeque<Long>> FREE = new HashMap<>(); // size -> addresses
  private static final long EMPTY_ADDRESS = Platform.allocateMemory(8);
  private static final ArrowBuf EMPTY = new ArrowBuf(ReferenceManager.NO_OP, null, 0, EMPTY_ADDRESS);

  static final Factory FACTORY = new Factory() {
    @Override
    public AllocationManager create(BufferAllocator accountingAllocator, long size) {
      return new RecyclingAllocationManager(accountingAllocator, size);
    }

    @Override
    public ArrowBuf empty() {
      return EMPTY;
    }
  };

  private final long size;
  private final long address;

  private RecyclingAllocationManager(BufferAllocator accountingAllocator, long size) {
    super(accountingAllocator);
    this.size = size;
    Long reused;
    synchronized (FREE) {
      ArrayDeque<Long> q = FREE.get(size);
      reused = q == null ? null : q.poll();
    }
    this.address = reused != null ? reused : Platform.allocateMemory(size);
  }

  /** A root allocator whose memory is recycled as above. */
  static RootAllocator rootAllocator() {
    return new RootAllocator(RootAllocator.configBuilder().allocationManagerFactory(FACTORY).build());
  }

  @Override
  public long getSize() {
    return size;
  }

  @Override
  protected long memoryAddress() {
    return address;
  }

  @Override
  protected void release0() {
    synchronized (FREE) {
      FREE.computeIfAbsent(size, k -> new ArrayDeque<>()).push(address);
    }
  }
}
