package dev.sparktrainer.spark;

import dev.sparktrainer.api.TrainingSummary;
import dev.sparktrainer.train.EpochStats;
import java.io.Serializable;
import java.util.List;

/**
 * What one barrier task sends back: its epoch statistics, the validation figures of each epoch (the same on
 * every rank; empty without a validation set), a digest of its final parameters (all ranks must
 * agree), rank 0's parameters, wall-clock timestamps (epoch millis) of its start-up phases (task start,
 * data loaded, communicator up, first training step, end), its device, and the precision it trained in
 * ("fp32" or "bf16", the estimator's precision with auto resolved).
 */
public record TaskResult(int rank, List<EpochStats> epochs, List<TrainingSummary.Validation> validation,
    float[] parameters, long parameterDigest,
    long taskStartMillis, long dataReadyMillis, long commReadyMillis, long firstStepMillis, long endMillis,
    String device, String precision) implements Serializable {}
