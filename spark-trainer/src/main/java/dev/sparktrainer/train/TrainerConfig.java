package dev.sparktrainer.train;

import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.optim.LrSchedule;
import dev.sparktrainer.optim.OptimizerConfig;
import java.io.Serializable;

/**
 * How to train: epochs, per-worker batch size, seed, optimizer, schedule, loss, gradient clipping and
 * accumulation. Immutable; {@code TrainerConfig.builder()...build()} validates with messages that say
 * what to fix.
 */
public final class TrainerConfig implements Serializable {
  private static final long serialVersionUID = 1L;

  private final int epochs;
  private final int batchSize;
  private final long seed;
  private final OptimizerConfig optimizer;
  private final LrSchedule schedule;
  private final Loss loss;
  private final double clipNorm;
  private final int accumulation;
  private final boolean dropLast;
  private final NonFinitePolicy nonFinite;

  /** What a step with NaN or infinite gradients does. */
  public enum NonFinitePolicy {
    /** Fail the job, naming the step (default). */
    FAIL,
    /** Skip the optimizer update of that step and count it in the epoch statistics. */
    SKIP;

    /** Parses "fail" or "skip". */
    public static NonFinitePolicy parse(String s) {
      return switch (s.toLowerCase(java.util.Locale.ROOT)) {
        case "fail" -> FAIL;
        case "skip" -> SKIP;
        default -> throw new IllegalArgumentException("nonFinite must be fail or skip, got '" + s + "'");
      };
    }
  }

  private TrainerConfig(Builder b) {
    this.epochs = b.epochs;
    this.batchSize = b.batchSize;
    this.seed = b.seed;
    this.optimizer = b.optimizer;
    this.schedule = b.schedule;
    this.loss = b.loss;
    this.clipNorm = b.clipNorm;
    this.accumulation = b.accumulation;
    this.dropLast = b.dropLast;
    this.nonFinite = b.nonFinite;
    if (epochs <= 0) {
      throw new IllegalArgumentException("epochs must be > 0, got " + epochs);
    }
    if (batchSize <= 0) {
      throw new IllegalArgumentException("batch size must be > 0, got " + batchSize);
    }
    if (accumulation <= 0) {
      throw new IllegalArgumentException("gradient accumulation steps must be >= 1, got " + accumulation);
    }
    if (!(clipNorm >= 0) || Double.isInfinite(clipNorm)) {
      throw new IllegalArgumentException("clipNorm must be >= 0 (0 turns clipping off), got " + clipNorm);
    }
    if (optimizer == null || schedule == null || loss == null || nonFinite == null) {
      throw new IllegalArgumentException("optimizer, schedule, loss and nonFinite must be set");
    }
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Builder with defaults: 1 epoch, batch 64, seed 42, AdamW(1e-3), constant LR, cross-entropy. */
  public static final class Builder {
    private int epochs = 1;
    private int batchSize = 64;
    private long seed = 42;
    private OptimizerConfig optimizer = OptimizerConfig.adamw(1e-3);
    private LrSchedule schedule = LrSchedule.constant();
    private Loss loss = Loss.CROSS_ENTROPY;
    private double clipNorm;
    private int accumulation = 1;
    private boolean dropLast;
    private NonFinitePolicy nonFinite = NonFinitePolicy.FAIL;

    /** What to do with a step whose gradients hold NaN or Inf (default: fail). */
    public Builder nonFinite(NonFinitePolicy v) {
      nonFinite = v;
      return this;
    }

    public Builder epochs(int v) {
      epochs = v;
      return this;
    }

    /** Per-worker batch size B (the global batch is W * B). */
    public Builder batchSize(int v) {
      batchSize = v;
      return this;
    }

    public Builder seed(long v) {
      seed = v;
      return this;
    }

    public Builder optimizer(OptimizerConfig v) {
      optimizer = v;
      return this;
    }

    public Builder schedule(LrSchedule v) {
      schedule = v;
      return this;
    }

    public Builder loss(Loss v) {
      loss = v;
      return this;
    }

    /** Clip gradients to this global L2 norm (0 = off). */
    public Builder clipNorm(double v) {
      clipNorm = v;
      return this;
    }

    /** Micro-batches per optimizer step (gradient accumulation), default 1. */
    public Builder accumulation(int v) {
      accumulation = v;
      return this;
    }

    /** Drop the last partial global batch instead of padding by wrapping. */
    public Builder dropLast(boolean v) {
      dropLast = v;
      return this;
    }

    public TrainerConfig build() {
      return new TrainerConfig(this);
    }
  }

  public int epochs() {
    return epochs;
  }

  public int batchSize() {
    return batchSize;
  }

  public long seed() {
    return seed;
  }

  public OptimizerConfig optimizer() {
    return optimizer;
  }

  public LrSchedule schedule() {
    return schedule;
  }

  public Loss loss() {
    return loss;
  }

  public double clipNorm() {
    return clipNorm;
  }

  public int accumulation() {
    return accumulation;
  }

  public boolean dropLast() {
    return dropLast;
  }

  public NonFinitePolicy nonFinite() {
    return nonFinite;
  }
}
