package dev.sparktrainer.spark;

import dev.sparktrainer.comm.WorkerContext;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Worker side of GPU scheduling: which CUDA device a task's GPU address is, and the check that no two ranks
 * of a job got the same GPU.
 *
 * <p>Note [GPU address -> CUDA device]: Spark gives a task the GPU addresses its discovery script printed.
 * Spark's example script and {@code conf/gpu-discovery.sh} print what nvidia-smi reports: physical indices
 * (nvidia-smi ignores CUDA_VISIBLE_DEVICES), or the entries of CUDA_VISIBLE_DEVICES themselves where it is
 * set (indices or UUIDs). CUDA numbers only the devices CUDA_VISIBLE_DEVICES lists, in its order. So:
 * <ul>
 *   <li>CUDA_VISIBLE_DEVICES unset: the address is the CUDA ordinal;
 *   <li>the address is an entry of CUDA_VISIBLE_DEVICES: the ordinal is its position ({@code
 *       CUDA_VISIBLE_DEVICES=2,3}, address 3 -> ordinal 1);
 *   <li>otherwise a number below the number of entries is taken as already numbered within
 *       CUDA_VISIBLE_DEVICES (a container or script that renumbers): the ordinal is the address;
 *   <li>anything else is an error that names both.
 * </ul>
 * The physical GPU, which the duplicate check compares, is the CUDA_VISIBLE_DEVICES entry at that ordinal
 * (or the address when it is unset).
 *
 * <p>Note [distinct GPUs]: NCCL cannot put two ranks on one GPU, and two ranks sharing a GPU by accident
 * (two executors on one host whose discovery scripts report the same addresses; a fractional task GPU amount
 * on the training stage) is a known way to get wrong or hung jobs. Before NCCL starts, every rank contributes
 * "physical GPU @ host" to one allGather; any GPU named twice fails every rank with the ranks' names.
 */
final class GpuPlacement {
  private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(GpuPlacement.class);

  private GpuPlacement() {}

  /** A task's GPU: the CUDA ordinal in this process and the physical GPU (for the duplicate check). */
  record Gpu(int ordinal, String physical) {}

  /**
   * Maps Spark's GPU address to the CUDA device, by Note [GPU address -> CUDA device].
   *
   * @param address the address Spark assigned to the task
   * @param visible the value of CUDA_VISIBLE_DEVICES in the executor, or null when unset
   */
  static Gpu resolve(String address, String visible) {
    String a = address.trim();
    if (visible == null) {
      try {
        int ordinal = Integer.parseInt(a);
        if (ordinal < 0) {
          throw new NumberFormatException("negative");
        }
        return new Gpu(ordinal, a);
      } catch (NumberFormatException e) {
        throw new IllegalStateException("GPU address '" + address + "' is not a device ordinal and "
            + "CUDA_VISIBLE_DEVICES is not set; the GPU discovery script must print ordinals such as \"0\", \"1\" "
            + "(or set CUDA_VISIBLE_DEVICES to the UUIDs it prints)", e);
      }
    }
    List<String> entries = new ArrayList<>();
    for (String e : visible.split(",")) {
      if (!e.isBlank()) {
        entries.add(e.trim());
      }
    }
    if (entries.isEmpty()) {
      throw new IllegalStateException("Spark gave this task GPU '" + address + "' but CUDA_VISIBLE_DEVICES is empty, "
          + "so no GPU is visible to CUDA; unset it or list the executor's GPUs in it");
    }
    int at = entries.indexOf(a);
    if (at >= 0) {
      return new Gpu(at, a);
    }
    try {
      int n = Integer.parseInt(a);
      if (n >= 0 && n < entries.size()) {
        return new Gpu(n, entries.get(n));
      }
    } catch (NumberFormatException notANumber) {
      // falls through to the error
    }
    throw new IllegalStateException("GPU address '" + address + "' is not in CUDA_VISIBLE_DEVICES=" + visible
        + " and is not an ordinal below its " + entries.size() + " entr" + (entries.size() == 1 ? "y" : "ies")
        + "; the GPU discovery script and CUDA_VISIBLE_DEVICES disagree (use conf/gpu-discovery.sh, which prints "
        + "the entries of CUDA_VISIBLE_DEVICES)");
  }

  /** The duplicate check's key: physical GPU @ host. */
  static String key(String physical, String host) {
    return physical + "@" + host;
  }

  /**
   * One collective (every rank calls it, before NCCL starts): fails on every rank when two ranks named the same
   * GPU. {@code mine} is this rank's {@link #key}, or "" for a rank without a Spark-assigned GPU.
   */
  static void check(WorkerContext wc, String mine) {
    List<String> all = wc.allGather(mine);
    String dup = duplicates(all);
    if (dup != null) {
      throw new IllegalStateException("rank " + wc.rank() + ": " + dup);
    }
    if (wc.rank() == 0) {
      LOG.info("GPUs of the " + all.size() + " ranks (GPU@host, by rank): " + all);
    }
  }

  /** The error message when a non-empty key occurs more than once in {@code keys} (index = rank); else null. */
  static String duplicates(List<String> keys) {
    Map<String, List<Integer>> ranks = new LinkedHashMap<>();
    for (int r = 0; r < keys.size(); r++) {
      String k = keys.get(r);
      if (k != null && !k.isEmpty()) {
        ranks.computeIfAbsent(k, x -> new ArrayList<>()).add(r);
      }
    }
    List<String> shared = new ArrayList<>();
    for (Map.Entry<String, List<Integer>> e : ranks.entrySet()) {
      if (e.getValue().size() > 1) {
        int at = e.getKey().lastIndexOf('@');
        shared.add("GPU " + e.getKey().substring(0, at) + " on host " + e.getKey().substring(at + 1) + " is used by ranks "
            + e.getValue());
      }
    }
    if (shared.isEmpty()) {
      return null;
    }
    return "the barrier tasks do not have a GPU each: " + String.join("; ", shared) + " (GPU@host of all ranks: "
        + Arrays.toString(keys.toArray()) + "). NCCL needs one GPU per rank. Likely causes: two executors on one "
        + "host whose GPU discovery scripts report the same addresses (give each worker its own GPUs, e.g. "
        + "CUDA_VISIBLE_DEVICES per worker with conf/gpu-discovery.sh), or a training stage without its task "
        + "resource profile and a fractional spark.task.resource.gpu.amount (see docs/gpu-scheduling.md)";
  }
}
