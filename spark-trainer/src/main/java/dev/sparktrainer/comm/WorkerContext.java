package dev.sparktrainer.comm;

import java.util.List;

/**
 * What a training worker knows about its place in the job, with or without Spark: rank, world size, the
 * GPU it should use (or -1), and a rendezvous to exchange strings with the other ranks. In Spark this is
 * backed by BarrierTaskContext (allGather); the local launcher backs it with an in-process or loopback
 * rendezvous.
 */
public interface WorkerContext {
  int rank();

  int worldSize();

  /** The CUDA device ordinal for this rank, or -1 on CPU. */
  int gpu();

  /** Every rank contributes one string; all get the list ordered by rank. A collective: all ranks call it. */
  List<String> allGather(String message);

  /** A secret shared by all ranks of this job (authenticates connections between them). */
  String jobToken();
}
