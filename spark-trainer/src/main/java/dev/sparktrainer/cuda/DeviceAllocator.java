package dev.sparktrainer.cuda;

/**
 * Physical device memory: one job, allocate and free raw addresses. {@link CudaDevice} backs it with
 * cuMemAlloc/cuMemFree; tests back it with a fake to exercise {@link CudaArena} without a GPU.
 */
public interface DeviceAllocator {
  /** Allocates {@code bytes} (> 0) and returns the device address; throws when out of memory. */
  long allocate(long bytes);

  /** Frees an address returned by {@link #allocate}. */
  void free(long address);
}
