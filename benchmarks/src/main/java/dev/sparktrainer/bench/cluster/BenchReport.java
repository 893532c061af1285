package dev.sparktrainer.bench.cluster;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.train.EpochStats;
import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocalFileSystem;
import org.apache.hadoop.fs.Path;

/**
 * The suite's report: a JSON list of entries in the results format of benchmarks/README.md (the GPU suite's
 * {@code benchmark, world, ours, pytorch, unit, card, commit} plus this suite's fields), a Markdown table and a
 * PNG chart, written as {@code <out>/<date>-<label>-<n>.{json,md,png}} with n the first free number.
 */
public final class BenchReport {
  private static final ObjectMapper JSON = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

  private BenchReport() {}

  /** Where the three files went (png null when the chart could not be drawn on this host). */
  public record Files(String json, String markdown, String png) {}

  /** What is common to all entries of one run of the suite. */
  public record Context(String date, String label, String commit, ClusterInfo cluster, BenchOptions options) {}

  /**
   * One entry from a fit's summary. The figure ("ours") is the median samples/s over the measured epochs
   * (all ranks' samples over the slowest rank's epoch time); per-rank figures sum the measured epochs.
   */
  public static Map<String, Object> entry(Context c, Workload w, int world, TrainingSummary s, double dataGenSeconds) {
    Map<String, Object> e = base(c, w, world);
    List<TrainingSummary.Epoch> epochs = s.epochs();
    int warm = Math.min(c.options().warmupEpochs(), Math.max(0, epochs.size() - 1));
    List<Double> repeats = new ArrayList<>();
    for (TrainingSummary.Epoch ep : epochs.subList(warm, epochs.size())) {
      repeats.add(ep.samplesPerSecond());
    }
    e.put("ours", finite(median(repeats)));
    e.put("card", c.cluster().card(s.device()));
    e.put("device", s.device());
    e.put("ours_repeats", repeats);
    e.put("fit_to_first_step_s", s.fitToFirstStepSeconds());
    e.put("fit_total_s", s.totalSeconds());
    e.put("data_gen_s", dataGenSeconds);
    e.put("final_loss", epochs.isEmpty() ? null : finite(epochs.get(epochs.size() - 1).loss()));
    long peak = Arrays.stream(s.peakDeviceMemoryBytes()).max().orElse(-1);
    if (peak >= 0) {
      e.put("ours_peak_mem_gib", peak / (double) (1L << 30));
    }
    double maxData = 0;
    double maxComm = 0;
    List<Map<String, Object>> ranks = new ArrayList<>();
    long[] peaks = s.peakDeviceMemoryBytes();
    for (int r = 0; r < s.perRank().size(); r++) {
      List<EpochStats> st = s.perRank().get(r);
      long samples = 0;
      double sec = 0;
      double data = 0;
      double compute = 0;
      double comm = 0;
      for (EpochStats x : st.subList(Math.min(warm, st.size()), st.size())) {
        samples += x.samples();
        sec += x.seconds();
        data += nz(x.dataWaitSeconds());
        compute += nz(x.computeSeconds());
        comm += nz(x.commSeconds());
      }
      Map<String, Object> rk = new LinkedHashMap<>();
      rk.put("rank", r);
      rk.put("samples_per_s", sec > 0 ? samples / sec : null);
      rk.put("seconds", sec);
      rk.put("data_wait_s", data);
      rk.put("compute_s", compute);
      rk.put("comm_s", comm);
      if (peaks[r] >= 0) {
        rk.put("peak_mem_bytes", peaks[r]);
      }
      ranks.add(rk);
      if (sec > 0) {
        maxData = Math.max(maxData, data / sec);
        maxComm = Math.max(maxComm, comm / sec);
      }
    }
    e.put("ours_data_wait_share_max_rank", maxData);
    e.put("ours_comm_wait_share_max_rank", maxComm);
    e.put("ranks", ranks);
    return e;
  }

  /** An entry for a fit that failed: no figure, the error instead. */
  public static Map<String, Object> failed(Context c, Workload w, int world, Throwable error) {
    Map<String, Object> e = base(c, w, world);
    e.put("ours", null);
    e.put("card", c.cluster().card(c.options().device().equals("cpu") ? "cpu" : "cuda"));
    String msg = String.valueOf(error.getMessage());
    int nl = msg.indexOf('\n');
    e.put("error", error.getClass().getSimpleName() + ": " + (nl > 0 ? msg.substring(0, nl) : msg));
    return e;
  }

  private static Map<String, Object> base(Context c, Workload w, int world) {
    Map<String, Object> e = new LinkedHashMap<>();
    e.put("benchmark", w.name());
    e.put("world", world);
    e.put("ours", null);
    e.put("pytorch", null);
    e.put("unit", "samples/s");
    e.put("card", null);
    e.put("commit", c.commit());
    e.put("date", c.date());
    e.put("cluster", c.label());
    e.put("master", c.cluster().master());
    e.put("spark_version", c.cluster().sparkVersion());
    e.put("executors", c.cluster().executors());
    e.put("scale", w.scale().toString());
    e.put("model", w.model());
    e.put("optimizer", w.optimizerText());
    e.put("batch_per_worker", w.batch());
    e.put("global_batch", (long) w.batch() * world);
    e.put("rows", w.rowsPerWorker() * world);
    e.put("epochs", c.options().epochs());
    e.put("warmup_epochs", c.options().warmupEpochs());
    return e;
  }

  /** Adds ours_scaling = samples/s(W) / (W x samples/s(1)) to every entry whose benchmark has a W = 1 figure. */
  public static void addScaling(List<Map<String, Object>> entries) {
    for (Map<String, Object> e : entries) {
      int w = (Integer) e.get("world");
      if (w == 1 || !(e.get("ours") instanceof Double v)) {
        continue;
      }
      for (Map<String, Object> one : entries) {
        if (one.get("benchmark").equals(e.get("benchmark")) && (Integer) one.get("world") == 1
            && one.get("ours") instanceof Double b && b > 0) {
          e.put("ours_scaling", v / (w * b));
        }
      }
    }
  }

  /** Writes the three files into {@code dir} (any Hadoop path) under the first free number n. */
  public static Files write(List<Map<String, Object>> entries, Context c, String dir, Configuration conf) {
    return reserve(c, dir, conf).write(entries);
  }

  /**
   * Claims {@code <dir>/<date>-<label>-<n>.json} for n the first free number (writing an empty list there), so
   * the suite can rewrite its report after every fit: a run cut short (a job timeout) leaves what it measured.
   */
  public static Target reserve(Context c, String dir, Configuration conf) {
    try {
      Path d = new Path(dir);
      FileSystem fs = d.getFileSystem(conf);
      if (fs instanceof LocalFileSystem local) {
        fs = local.getRawFileSystem(); // no .crc files beside the report
      }
      fs.mkdirs(d);
      String prefix = c.date() + "-" + c.label() + "-";
      Pattern p = Pattern.compile(Pattern.quote(prefix) + "(\\d+)\\.(json|md|png)");
      int n = 0;
      for (FileStatus st : fs.listStatus(d)) {
        Matcher m = p.matcher(st.getPath().getName());
        if (m.matches()) {
          n = Math.max(n, Integer.parseInt(m.group(1)));
        }
      }
      while (true) {
        n++;
        Path json = new Path(d, prefix + n + ".json");
        try (OutputStream out = fs.create(json, false)) {
          out.write("[]".getBytes(StandardCharsets.UTF_8));
          return new Target(fs, d, prefix + n, c);
        } catch (FileAlreadyExistsException e) {
          // another run took this number meanwhile: the next one
        }
      }
    } catch (IOException e) {
      throw new UncheckedIOException("could not write the benchmark report to " + dir + ": " + e.getMessage(), e);
    }
  }

  /** The claimed report files; {@link #write} (re)writes all three. */
  public static final class Target {
    private final FileSystem fs;
    private final Path json;
    private final Path md;
    private final Path png;
    private final String base;
    private final Context context;

    Target(FileSystem fs, Path dir, String base, Context context) {
      this.fs = fs;
      this.base = base;
      this.context = context;
      this.json = new Path(dir, base + ".json");
      this.md = new Path(dir, base + ".md");
      this.png = new Path(dir, base + ".png");
    }

    /** Writes the entries as JSON, Markdown and (when the host can draw it) PNG, replacing earlier versions. */
    public Files write(List<Map<String, Object>> entries) {
      return write(entries, true);
    }

    /** The same; {@code chart} false leaves the PNG out (Files.png null), for the rewrites between fits. */
    public Files write(List<Map<String, Object>> entries, boolean chart) {
      Context c = context;
      try {
        put(fs, json, JSON.writeValueAsBytes(entries));
        put(fs, md, markdown(entries, c, base).getBytes(StandardCharsets.UTF_8));
        String pngName = null;
        try {
          if (chart) {
            put(fs, png, BenchChart.png(entries, base + ", commit " + c.commit()));
            pngName = fs.makeQualified(png).toString();
          }
        } catch (IOException | RuntimeException | LinkageError | InternalError e) {
          // Note [chart is optional]: AWT text needs fontconfig and a font; a host without them still gets the
          // JSON and the table, and the reason goes to stderr.
          System.err.println("[cluster-bench] no PNG chart (" + e + "); install fontconfig and a font (e.g. "
              + "fonts-dejavu-core) on the driver for it");
        }
        return new Files(fs.makeQualified(json).toString(), fs.makeQualified(md).toString(), pngName);
      } catch (IOException e) {
        throw new UncheckedIOException("could not write the benchmark report " + json + ": " + e.getMessage(), e);
      }
    }
  }

  private static void put(FileSystem fs, Path p, byte[] bytes) throws IOException {
    try (OutputStream out = fs.create(p, true)) {
      out.write(bytes);
    }
  }

  /** The Markdown table (and per-rank breakdown) of the entries. */
  public static String markdown(List<Map<String, Object>> entries, Context c, String title) {
    String cards = String.join(", ", entries.stream().map(e -> String.valueOf(e.get("card"))).distinct().toList());
    StringBuilder b = new StringBuilder();
    b.append(String.format(Locale.ROOT, "# Cluster benchmarks %s (%s, commit %s, master %s, Spark %s, card: %s)%n%n",
        title, c.date(), c.commit(), c.cluster().master(), c.cluster().sparkVersion(), cards));
    b.append(String.format(Locale.ROOT, "Scale %s, %d epochs per fit of which %d warm-up; samples/s is the median "
        + "over the measured epochs (all ranks' samples / slowest rank's epoch time). Synthetic rows generated on the "
        + "executors, cached before fit.%n%n", c.options().scale(), c.options().epochs(), c.options().warmupEpochs()));
    b.append("| benchmark | W | samples/s | scaling | batch/worker | fit -> first step (s) | fit total (s) "
        + "| peak GiB (max rank) | data wait (max rank) | comm (max rank) | device |\n");
    b.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (Map<String, Object> e : entries) {
      b.append(String.format(Locale.ROOT, "| %s | %d | %s | %s | %d | %s | %s | %s | %s | %s | %s |%n",
          e.get("benchmark"), (Integer) e.get("world"),
          e.get("ours") == null ? "failed" : fmt("%.1f", e.get("ours")), fmt("%.3f", e.get("ours_scaling")),
          (Integer) e.get("batch_per_worker"), fmt("%.2f", e.get("fit_to_first_step_s")),
          fmt("%.2f", e.get("fit_total_s")), fmt("%.2f", e.get("ours_peak_mem_gib")),
          pct(e.get("ours_data_wait_share_max_rank")), pct(e.get("ours_comm_wait_share_max_rank")),
          e.get("device") == null ? "-" : e.get("device")));
    }
    b.append("\nPer rank, measured epochs summed:\n\n");
    b.append("| benchmark | W | rank | samples/s | seconds | data wait (s) | compute (s) | comm (s) | peak MiB |\n");
    b.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (Map<String, Object> e : entries) {
      Object rs = e.get("ranks");
      if (!(rs instanceof List<?> list)) {
        continue;
      }
      for (Object o : list) {
        @SuppressWarnings("unchecked")
        Map<String, Object> r = (Map<String, Object>) o;
        Object peak = r.get("peak_mem_bytes");
        b.append(String.format(Locale.ROOT, "| %s | %d | %d | %s | %s | %s | %s | %s | %s |%n", e.get("benchmark"),
            (Integer) e.get("world"), (Integer) r.get("rank"), fmt("%.1f", r.get("samples_per_s")),
            fmt("%.3f", r.get("seconds")), fmt("%.3f", r.get("data_wait_s")), fmt("%.3f", r.get("compute_s")),
            fmt("%.3f", r.get("comm_s")),
            peak == null ? "-" : String.format(Locale.ROOT, "%.1f", ((Number) peak).longValue() / 1048576.0)));
      }
    }
    b.append("\nModels:\n\n");
    entries.stream().map(e -> "- " + e.get("benchmark") + ": " + e.get("model") + ", " + e.get("optimizer") + "\n")
        .distinct().forEach(b::append);
    List<String> failures = entries.stream().filter(e -> e.get("error") != null)
        .map(e -> "- " + e.get("benchmark") + " W=" + e.get("world") + ": " + e.get("error") + "\n").toList();
    if (!failures.isEmpty()) {
      b.append("\nFailed:\n\n");
      failures.forEach(b::append);
    }
    return b.toString();
  }

  static double median(List<Double> xs) {
    if (xs.isEmpty()) {
      return Double.NaN;
    }
    double[] a = xs.stream().mapToDouble(Double::doubleValue).sorted().toArray();
    int n = a.length;
    return n % 2 == 1 ? a[n / 2] : (a[n / 2 - 1] + a[n / 2]) / 2;
  }

  private static Double finite(double v) {
    return Double.isFinite(v) ? v : null;
  }

  private static double nz(double v) {
    return Double.isFinite(v) ? v : 0;
  }

  private static String fmt(String f, Object v) {
    return v instanceof Number x ? String.format(Locale.ROOT, f, x.doubleValue()) : "-";
  }

  private static String pct(Object v) {
    return v instanceof Number x ? String.format(Locale.ROOT, "%.2f%%", 100 * x.doubleValue()) : "-";
  }
}
