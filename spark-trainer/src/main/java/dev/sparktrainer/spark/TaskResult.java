package dev.sparktrainer.spark;

import dev.sparktrainer.train.EpochStats;
import java.io.Serializable;
import java.util.List;

/**
 * What one barrier task sends back: its epoch statistics, a digest of its final parameters (all ranks must
 * agree), rank 0's parameters, and timestamps for the time-to-first-step figure.
 */
public record TaskResult(int rank, List<EpochStats> epochs, float[] parameters, long parameterDigest,
    long taskStartMillis, long dataReadyMillis, long firstStepMillis, long endMillis, String device) implements Serializable {}
