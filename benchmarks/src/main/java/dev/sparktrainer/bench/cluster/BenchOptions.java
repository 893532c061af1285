package dev.sparktrainer.bench.cluster;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * The command line of {@link ClusterBench}, parsed and checked without touching Spark: every mistake throws
 * an {@link IllegalArgumentException} that names the option, the value and what it accepts. The job
 * definitions in benchmarks/cluster/ are checked against this parser in CI.
 *
 * @param master Spark master URL, or null to use the session's (spark-submit, Databricks)
 * @param benches benchmarks to run, in order (see {@link Workload#NAMES})
 * @param worlds world sizes W to run each benchmark at, in order (e.g. 1, 2, 4 for a scaling curve)
 * @param device cpu, cuda or auto (the estimator's device param)
 * @param scale size preset of the models and data ({@link Workload.Scale})
 * @param epochs epochs per fit, warm-up included
 * @param warmupEpochs leading epochs left out of the throughput figure (< epochs)
 * @param batch per-worker batch size; 0 = the scale's default for each benchmark
 * @param rowsPerWorker synthetic rows per worker (total rows = W x this); 0 = the scale's default
 * @param out folder of the report (a local path, or any Hadoop path: hdfs://, s3a://, dbfs:/)
 * @param label cluster label in the report's file name; null = derived from the master and the card
 * @param commit commit of the code measured; null = git rev-parse in the working folder, else "unknown"
 * @param seed random seed of the data and the weights
 * @param timeoutSeconds the estimator's collective timeout
 * @param conf extra Spark settings for the session ClusterBench creates (--conf key=value)
 * @param help whether --help was given (nothing else is checked then)
 */
public record BenchOptions(String master, List<String> benches, List<Integer> worlds, String device,
    Workload.Scale scale, int epochs, int warmupEpochs, int batch, long rowsPerWorker, String out, String label,
    String commit, long seed, int timeoutSeconds, Map<String, String> conf, boolean help) {

  /** What --help prints. */
  public static final String USAGE = String.join("\n",
      "usage: ClusterBench [--master URL] [--benches mlp,small-cnn,resnet50] [--world 1,2,4]",
      "                    [--device auto|cpu|cuda] [--scale tiny|small|full] [--epochs N] [--warmup-epochs N]",
      "                    [--batch N] [--rows-per-worker N] [--out DIR] [--label NAME] [--commit SHA] [--seed N]",
      "                    [--timeout-seconds N] [--conf key=value]...",
      "  --master           local[*], local[N], local-cluster[N,C,MB], spark://host:port, yarn,",
      "                     k8s://https://host:port; leave out under spark-submit or on Databricks (the session's",
      "                     master is used)",
      "  --benches          comma-separated, from: " + String.join(", ", Workload.NAMES) + " (default: all)",
      "  --world            comma-separated world sizes W (barrier tasks = GPUs); default 1",
      "  --device           auto (cuda when the tasks have GPUs), cpu or cuda; default auto",
      "  --scale            model and data sizes: tiny (CI, seconds on 2 cores), small (CPU clusters), full (GPUs);",
      "                     default small",
      "  --epochs           epochs per fit, warm-up included; default 3",
      "  --warmup-epochs    leading epochs left out of samples/s; default 1",
      "  --batch            per-worker batch size for every benchmark (default: the scale's, per benchmark)",
      "  --rows-per-worker  synthetic rows per worker, generated on the executors (default: the scale's)",
      "  --out              report folder (local or Hadoop path); default bench-results",
      "  --label            cluster label in the file name <date>-<label>-<n>.json; default from master and card",
      "  --commit           commit recorded in the report; default git rev-parse --short HEAD, else unknown",
      "  --conf             Spark setting for the session ClusterBench starts (repeatable)");

  private static final Set<String> DEVICES = Set.of("auto", "cpu", "cuda");

  public BenchOptions {
    benches = List.copyOf(benches);
    worlds = List.copyOf(worlds);
    conf = Collections.unmodifiableMap(new LinkedHashMap<>(conf));
  }

  /** Parses and checks the arguments; throws IllegalArgumentException saying what is wrong and what to write. */
  public static BenchOptions parse(String... args) {
    String master = null;
    List<String> benches = Workload.NAMES;
    List<Integer> worlds = List.of(1);
    String device = "auto";
    Workload.Scale scale = Workload.Scale.SMALL;
    int epochs = 3;
    int warmup = 1;
    boolean warmupGiven = false;
    int batch = 0;
    long rows = 0;
    String out = "bench-results";
    String label = null;
    String commit = null;
    long seed = 42;
    int timeout = 300;
    Map<String, String> conf = new LinkedHashMap<>();
    boolean help = false;
    for (int i = 0; i < args.length; i++) {
      String opt = args[i];
      if (opt.equals("--help") || opt.equals("-h")) {
        help = true;
        continue;
      }
      if (!opt.startsWith("--")) {
        throw new IllegalArgumentException("unexpected argument '" + opt + "': options start with -- (see --help)");
      }
      if (i + 1 >= args.length) {
        throw new IllegalArgumentException(opt + " needs a value (see --help)");
      }
      String v = args[++i];
      switch (opt) {
        case "--master" -> master = master(v);
        case "--benches" -> benches = benches(v);
        case "--world" -> worlds = worlds(v);
        case "--device" -> {
          device = v.toLowerCase(Locale.ROOT);
          if (!DEVICES.contains(device)) {
            throw new IllegalArgumentException("--device: '" + v + "' is not one of auto, cpu, cuda");
          }
        }
        case "--scale" -> scale = Workload.Scale.parse(v);
        case "--epochs" -> epochs = positiveInt(opt, v);
        case "--warmup-epochs" -> {
          warmup = nonNegativeInt(opt, v);
          warmupGiven = true;
        }
        case "--batch" -> batch = positiveInt(opt, v);
        case "--rows-per-worker" -> rows = positiveLong(opt, v);
        case "--out" -> out = nonEmpty(opt, v);
        case "--label" -> label = label(v);
        case "--commit" -> commit = nonEmpty(opt, v);
        case "--seed" -> seed = longValue(opt, v);
        case "--timeout-seconds" -> timeout = positiveInt(opt, v);
        case "--conf" -> {
          int eq = v.indexOf('=');
          if (eq <= 0) {
            throw new IllegalArgumentException("--conf: '" + v
                + "' is not key=value (e.g. --conf spark.ui.enabled=false)");
          }
          conf.put(v.substring(0, eq).trim(), v.substring(eq + 1).trim());
        }
        default -> throw new IllegalArgumentException("unknown option " + opt + " (known: --master, --benches, "
            + "--world, --device, --scale, --epochs, --warmup-epochs, --batch, --rows-per-worker, --out, --label, "
            + "--commit, --seed, --timeout-seconds, --conf, --help)");
      }
    }
    if (!warmupGiven && epochs == 1) {
      warmup = 0; // one epoch: measure it rather than fail on the default
    }
    if (!help && warmup >= epochs) {
      throw new IllegalArgumentException("--warmup-epochs " + warmup + " leaves no measured epoch of --epochs "
          + epochs + ": give more epochs or fewer warm-up epochs");
    }
    return new BenchOptions(master, benches, worlds, device, scale, epochs, warmup, batch, rows, out, label, commit,
        seed, timeout, conf, help);
  }

  /** Number of epochs whose samples/s make up the figure. */
  public int measuredEpochs() {
    return epochs - warmupEpochs;
  }

  static String master(String v) {
    String m = v.trim();
    boolean ok = m.equals("local") || m.matches("local\\[(\\*|\\d+)(,\\d+)?]")
        || m.matches("local-cluster\\[\\d+,\\s*\\d+,\\s*\\d+]") || m.startsWith("spark://") || m.equals("yarn")
        || m.startsWith("k8s://") || (m.contains("://") && !m.startsWith("://"));
    if (!ok) {
      throw new IllegalArgumentException("--master: '" + v + "' is not a Spark master URL (expected local[*], "
          + "local[N], local-cluster[workers,cores,memoryMB], spark://host:7077, yarn or k8s://https://host:6443; "
          + "leave --master out under spark-submit)");
    }
    return m;
  }

  static List<String> benches(String v) {
    Set<String> out = new LinkedHashSet<>();
    for (String s : v.split(",")) {
      String b = s.trim().toLowerCase(Locale.ROOT);
      if (b.isEmpty()) {
        continue;
      }
      if (b.equals("all")) {
        out.addAll(Workload.NAMES);
      } else if (Workload.NAMES.contains(b)) {
        out.add(b);
      } else {
        throw new IllegalArgumentException("--benches: unknown benchmark '" + s.trim() + "' (known: "
            + String.join(", ", Workload.NAMES) + ", all)");
      }
    }
    if (out.isEmpty()) {
      throw new IllegalArgumentException("--benches: no benchmark named in '" + v + "' (known: "
          + String.join(", ", Workload.NAMES) + ")");
    }
    return new ArrayList<>(out);
  }

  static List<Integer> worlds(String v) {
    Set<Integer> out = new LinkedHashSet<>();
    for (String s : v.split(",")) {
      if (!s.isBlank()) {
        out.add(positiveInt("--world", s.trim()));
      }
    }
    if (out.isEmpty()) {
      throw new IllegalArgumentException("--world: no world size in '" + v + "' (e.g. --world 1,2,4)");
    }
    return new ArrayList<>(out);
  }

  static String label(String v) {
    if (!v.matches("[A-Za-z0-9][A-Za-z0-9._-]*")) {
      throw new IllegalArgumentException("--label: '" + v + "' must be letters, digits, '.', '_' or '-' (it goes "
          + "into the file name), e.g. databricks-a100x8");
    }
    return v;
  }

  private static String nonEmpty(String opt, String v) {
    if (v.isBlank()) {
      throw new IllegalArgumentException(opt + " needs a non-empty value");
    }
    return v;
  }

  private static int positiveInt(String opt, String v) {
    long x = longValue(opt, v);
    if (x <= 0 || x > Integer.MAX_VALUE) {
      throw new IllegalArgumentException(opt + ": '" + v + "' is not a positive integer");
    }
    return (int) x;
  }

  private static int nonNegativeInt(String opt, String v) {
    long x = longValue(opt, v);
    if (x < 0 || x > Integer.MAX_VALUE) {
      throw new IllegalArgumentException(opt + ": '" + v + "' is not an integer >= 0");
    }
    return (int) x;
  }

  private static long positiveLong(String opt, String v) {
    long x = longValue(opt, v);
    if (x <= 0) {
      throw new IllegalArgumentException(opt + ": '" + v + "' is not a positive integer");
    }
    return x;
  }

  private static long longValue(String opt, String v) {
    try {
      return Long.parseLong(v.trim());
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(opt + ": '" + v + "' is not an integer");
    }
  }
}
