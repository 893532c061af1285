package dev.sparktrainer.bench;

import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.RunnerException;
import org.openjdk.jmh.runner.options.CommandLineOptionException;
import org.openjdk.jmh.runner.options.CommandLineOptions;
import org.openjdk.jmh.runner.options.Options;
import org.openjdk.jmh.runner.options.OptionsBuilder;

/**
 * Runs {@link RowsToArrow} and prints its results as the markdown table of benchmarks/README.md: rows/s
 * and float payload GB/s (rows/s x dim x 4 B, 10^9 B) per path and array length. Arguments are JMH
 * command-line options (e.g. {@code -wi 2 -i 3 -p dim=784}, or a regex such as {@code RowsToArrow.arrow}
 * to run some of the benchmarks; default: all of RowsToArrow).
 *
 * <pre>java -cp benchmarks/target/benchmarks.jar dev.sparktrainer.bench.RowsToArrowTable</pre>
 */
public final class RowsToArrowTable {
  private static final String[] ORDER = {"arrowRowStore", "arrowRowStoreRecycled", "sparkArrowWriter",
      "sparkArrowConverters", "bulkCopyCeiling"};
  private static final Map<String, String> LABEL = Map.of(
      "arrowRowStore", "ours: `ArrowRowStore.fromInternalRows`, Arrow's default (Netty) allocator",
      "arrowRowStoreRecycled", "ours, allocator recycling freed memory (no first-touch page faults)",
      "sparkArrowWriter", "Spark `ArrowWriter` (per-element `setSafe`), reused root",
      "sparkArrowConverters", "Spark `ArrowConverters.toBatchWithSchemaIterator` (IPC bytes out)",
      "bulkCopyCeiling", "ceiling: the same copies into one reused, pre-touched off-heap buffer, no checks");

  private RowsToArrowTable() {}

  public static void main(String[] args) throws RunnerException, CommandLineOptionException {
    CommandLineOptions cli = new CommandLineOptions(args);
    OptionsBuilder ob = new OptionsBuilder();
    ob.parent(cli);
    if (cli.getIncludes().isEmpty()) {
      ob.include(RowsToArrow.class.getName() + "\\.");
    }
    Options opts = ob.build();
    Collection<RunResult> results = new Runner(opts).run();
    // benchmark -> dim -> rows/s (+- error)
    Map<String, Map<Integer, double[]>> byPath = new TreeMap<>();
    for (RunResult r : results) {
      String name = r.getParams().getBenchmark();
      name = name.substring(name.lastIndexOf('.') + 1);
      int dim = Integer.parseInt(r.getParams().getParam("dim"));
      double score = r.getPrimaryResult().getScore();
      double err = r.getPrimaryResult().getScoreError();
      byPath.computeIfAbsent(name, k -> new TreeMap<>()).put(dim, new double[] {score, err});
    }
    List<Integer> dims = new ArrayList<>();
    byPath.values().forEach(m -> m.keySet().forEach(d -> {
      if (!dims.contains(d)) {
        dims.add(d);
      }
    }));
    dims.sort(null);
    StringBuilder sb = new StringBuilder("\n| path |");
    for (int d : dims) {
      sb.append(" array<float>[").append(d).append("]: rows/s, payload GB/s |");
    }
    sb.append("\n| --- |");
    dims.forEach(d -> sb.append(" --- |"));
    for (String path : ORDER) {
      Map<Integer, double[]> m = byPath.get(path);
      if (m == null) {
        continue;
      }
      sb.append("\n| ").append(LABEL.getOrDefault(path, path)).append(" |");
      for (int d : dims) {
        double[] s = m.get(d);
        if (s == null) {
          sb.append(" - |");
        } else {
          String err = Double.isNaN(s[1]) ? "" : " (+-" + rows(s[1]) + ")";
          sb.append(String.format(Locale.ROOT, " %s%s, %.2f |", rows(s[0]), err, s[0] * d * Float.BYTES / 1e9));
        }
      }
    }
    System.out.println(sb);
  }

  private static String rows(double r) {
    return r >= 1e6 ? String.format(Locale.ROOT, "%.2fM", r / 1e6) : String.format(Locale.ROOT, "%.0fk", r / 1e3);
  }
}
