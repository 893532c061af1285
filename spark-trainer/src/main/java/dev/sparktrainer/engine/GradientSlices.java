package dev.sparktrainer.engine;

/**
 * A gradient given as the sum of {@code ways} slices of n elements each (Note [summed gradient slices] in
 * native/kernels/optim.cuh): slice j is the j-th n elements of {@code slices}, except slice {@code own} (when {@code
 * own >= 0}), which is {@code ownSlice} instead. The slices are added in fp32 in the order j = 0, 1, ..., and rounded
 * once to their dtype.
 *
 * <p>The sharded optimizer's all-to-all (Note [sharded optimizer] in train.Trainer) brings the other ranks' chunks of
 * this rank's slice; this rank's own chunk stays where backward wrote it, in the gradient buffer, so the exchange need
 * not copy it (Note [copy-engine collectives] in cuda.NcclCommunicator).
 *
 * @param slices {@code ways} times n elements; the chunk at {@code own} is not read
 * @param ways how many slices are summed (1: the gradient is {@code slices} itself)
 * @param own the slice read from {@code ownSlice}, or -1 for none
 * @param ownSlice n elements of {@code slices}' dtype, or null when {@code own} is -1
 */
public record GradientSlices(Tensor slices, int ways, int own, Tensor ownSlice) {

  public GradientSlices {
    if (slices == null || ways < 1 || slices.numel() % ways != 0) {
      throw new IllegalArgumentException("gradient slices: " + slices + " does not split into " + ways + " slices");
    }
    if (own < -1 || own >= ways || (own == -1) != (ownSlice == null)) {
      throw new IllegalArgumentException("gradient slices: own slice " + own + " of " + ways + " with "
          + (ownSlice == null ? "no tensor" : ownSlice.toString()) + " (give a slice index and its tensor, or -1"
          + " and null)");
    }
    if (ownSlice != null && (ownSlice.numel() != slices.numel() / ways || ownSlice.dtype() != slices.dtype())) {
      throw new IllegalArgumentException("gradient slices: the own slice " + ownSlice + " must hold "
          + slices.numel() / ways + " elements of " + slices.dtype() + ", as each of the " + ways + " slices of "
          + slices);
    }
  }

  /** All {@code ways} slices from {@code slices}. */
  public static GradientSlices of(Tensor slices, int ways) {
    return new GradientSlices(slices, ways, -1, null);
  }

  /** The elements in each slice. */
  public long sliceSize() {
    return slices.numel() / ways;
  }

  /** Slice j as a tensor: {@code ownSlice} at {@code own}, else a view of {@code slices}. */
  public Tensor slice(int j) {
    if (j < 0 || j >= ways) {
      throw new IndexOutOfBoundsException("slice " + j + " of " + ways);
    }
    long n = sliceSize();
    return j == own ? ownSlice : slices.view(j * n, Math.toIntExact(n));
  }
}
