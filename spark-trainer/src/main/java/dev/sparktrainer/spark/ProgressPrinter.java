package dev.sparktrainer.spark;

import dev.sparktrainer.api.StragglerReport;
import dev.sparktrainer.train.EpochStats;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.function.LongSupplier;

/**
 * Shows the ranks' progress on the driver: a console progress bar redrawn in place ({@link Mode#BAR}, when
 * the driver is attached to a terminal) or log lines at every 10% and every epoch end ({@link Mode#LOG}).
 * Each epoch's validation figures (when the fit has a validation set) are logged as they arrive. Also the
 * live straggler check: when every rank has reported an epoch's statistics, ranks whose busy time
 * is >= 20% above the median are named at once (see {@link StragglerReport}).
 *
 * <p>Chosen by the Spark conf {@value #CONF}: {@code auto} (default: bar on a terminal, else log), {@code bar},
 * {@code log} or {@code off}.
 */
public final class ProgressPrinter implements ProgressListener {
  /** The Spark conf key that picks the mode. */
  public static final String CONF = "spark.sparktrainer.progress";
  static final long REDRAW_NANOS = 100_000_000L;
  static final int BAR_WIDTH = 30;

  /** How progress is shown. */
  public enum Mode {
    BAR, LOG, OFF;

    /** "auto", "bar", "log" or "off" (auto: bar when the driver has a console). */
    public static Mode parse(String v, boolean console) {
      return switch (v == null ? "auto" : v.trim().toLowerCase(Locale.ROOT)) {
        case "auto" -> console ? BAR : LOG;
        case "bar" -> BAR;
        case "log" -> LOG;
        case "off", "false", "none" -> OFF;
        default -> throw new IllegalArgumentException(CONF + " must be auto, bar, log or off, got '" + v + "'");
      };
    }
  }

  private final Mode mode;
  private final PrintStream bar;
  private final Consumer<String> log;
  private final LongSupplier clock;
  private final int world;
  private final int batchSize;
  private final Map<Integer, ProgressEvent.Step> latest = new HashMap<>();
  private final Map<Integer, Map<Integer, EpochStats>> epochs = new TreeMap<>();
  private final List<String> stragglerLines = new ArrayList<>();
  private long lastDraw = Long.MIN_VALUE;
  private int lastDecile = -1;
  private int lastEpoch = -1;
  private boolean finished;
  private int lastWidth;

  /**
   * @param bar where the bar is drawn (BAR mode), e.g. System.err
   * @param log where log lines go (LOG mode, and straggler warnings in both modes)
   */
  public ProgressPrinter(Mode mode, int world, int batchSize, PrintStream bar, Consumer<String> log,
      LongSupplier clock) {
    this.mode = mode;
    this.world = world;
    this.batchSize = batchSize;
    this.bar = bar;
    this.log = log;
    this.clock = clock;
  }

  /** The printer for this driver: mode from {@value #CONF}, bar on stderr, lines to the trainer's log. */
  public static ProgressPrinter forDriver(String confValue, int world, int batchSize) {
    org.slf4j.Logger logger = org.slf4j.LoggerFactory.getLogger("dev.sparktrainer.progress");
    Consumer<String> sink = line -> {
      if (line.startsWith("straggler")) {
        logger.warn(line);
      } else {
        logger.info(line);
      }
    };
    return new ProgressPrinter(Mode.parse(confValue, System.console() != null), world, batchSize, System.err, sink,
        System::nanoTime);
  }

  public Mode mode() {
    return mode;
  }

  /** Straggler lines printed while training ran (one per straggler and epoch). */
  public synchronized List<String> stragglerLines() {
    return List.copyOf(stragglerLines);
  }

  @Override
  public synchronized void accept(ProgressEvent e) {
    if (e instanceof ProgressEvent.Step s) {
      latest.put(s.rank(), s);
      show(false);
    } else if (e instanceof ProgressEvent.Epoch ep) {
      epochDone(ep.stats());
    } else if (e instanceof ProgressEvent.Validation v) {
      if (mode != Mode.OFF) {
        if (mode == Mode.BAR) {
          clearBar();
        }
        log.accept(validationLine(v));
      }
    } else if (e instanceof ProgressEvent.Done) {
      show(true);
    }
  }

  private void epochDone(EpochStats s) {
    Map<Integer, EpochStats> byRank = epochs.computeIfAbsent(s.epoch(), k -> new TreeMap<>());
    byRank.put(s.rank(), s);
    if (byRank.size() < world) {
      return;
    }
    List<EpochStats> all = new ArrayList<>(byRank.values());
    long samples = 0;
    double loss = 0;
    double acc = 0;
    for (EpochStats x : all) {
      samples += x.samples();
      loss += x.loss() * x.samples();
      acc += x.accuracy() * x.samples();
    }
    if (mode == Mode.LOG && samples > 0) {
      log.accept(String.format(Locale.ROOT, "training: epoch %d finished: loss %.4f%s", s.epoch() + 1,
          loss / samples, Double.isNaN(acc) ? "" : String.format(Locale.ROOT, ", accuracy %.4f", acc / samples)));
    }
    StragglerReport r = StragglerReport.ofEpoch(all, batchSize, StragglerReport.DEFAULT_THRESHOLD);
    if (r.hasStragglers()) {
      for (String line : r.toString().split(System.lineSeparator())) {
        stragglerLines.add(line);
        if (mode == Mode.BAR) {
          clearBar();
        }
        log.accept(line);
      }
    }
  }

  private void show(boolean done) {
    if (mode == Mode.OFF || latest.isEmpty() || finished) {
      return;
    }
    // Ranks step in lockstep; show the slowest rank's position and the sum of the ranks' rates.
    ProgressEvent.Step slowest = null;
    double rate = 0;
    for (ProgressEvent.Step s : latest.values()) {
      if (slowest == null || s.step() < slowest.step()) {
        slowest = s;
      }
      rate += s.samplesPerSecond();
    }
    boolean complete = slowest.step() >= slowest.totalSteps() && latest.size() == world;
    String line = line(slowest, rate, complete);
    if (mode == Mode.BAR) {
      long now = clock.getAsLong();
      boolean epochChanged = slowest.epoch() != lastEpoch;
      if (complete || done || epochChanged || now - lastDraw >= REDRAW_NANOS) {
        lastDraw = now;
        lastEpoch = slowest.epoch();
        String padded = line.length() < lastWidth ? line + " ".repeat(lastWidth - line.length()) : line;
        lastWidth = line.length();
        bar.print("\r" + padded);
        if (complete) {
          bar.println();
          finished = true;
        }
        bar.flush();
      }
    } else {
      int decile = (int) (10 * slowest.step() / Math.max(1, slowest.totalSteps()));
      if (decile != lastDecile || slowest.epoch() != lastEpoch) {
        lastDecile = decile;
        lastEpoch = slowest.epoch();
        log.accept("training: " + line);
        finished = complete;
      }
    }
  }

  /** Ends the bar's line when training stopped before the bar was complete (a failure, a lost event). */
  @Override
  public synchronized void close() {
    if (mode == Mode.BAR && lastWidth > 0 && !finished) {
      bar.println();
      bar.flush();
    }
    finished = true;
  }

  private void clearBar() {
    if (lastWidth > 0) {
      bar.print("\r" + " ".repeat(lastWidth) + "\r");
      bar.flush();
    }
  }

  static String line(ProgressEvent.Step s, double samplesPerSecond, boolean complete) {
    double frac = s.totalSteps() > 0 ? Math.min(1.0, s.step() / (double) s.totalSteps()) : 0;
    int filled = (int) Math.round(frac * BAR_WIDTH);
    String eta = complete ? "done" : "ETA " + duration(s.etaSeconds());
    String rate = samplesPerSecond > 0 ? String.format(Locale.ROOT, "%,.0f", samplesPerSecond) : "-";
    return String.format(Locale.ROOT, "epoch %d/%d [%s%s] %3.0f%% step %d/%d, %s samples/s, %s%s",
        Math.min(s.epoch() + 1, s.epochs()), s.epochs(), "#".repeat(filled), "-".repeat(BAR_WIDTH - filled),
        frac * 100, s.step(), s.totalSteps(), rate, eta,
        Double.isNaN(s.loss()) ? "" : String.format(Locale.ROOT, ", loss %.4f", s.loss()));
  }

  static String validationLine(ProgressEvent.Validation v) {
    return String.format(Locale.ROOT, "validation: epoch %d: loss %.4f%s (%,d rows)", v.epoch() + 1, v.loss(),
        Double.isNaN(v.accuracy()) ? "" : String.format(Locale.ROOT, ", accuracy %.4f", v.accuracy()), v.rows());
  }

  static String duration(double seconds) {
    if (!Double.isFinite(seconds) || seconds < 0) {
      return "?";
    }
    long t = Math.round(seconds);
    return t >= 3600 ? String.format(Locale.ROOT, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60)
        : String.format(Locale.ROOT, "%d:%02d", t / 60, t % 60);
  }
}
