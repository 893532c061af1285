package dev.sparktrainer.checkpoint;

/**
 * A checkpoint file that passed every check of {@link CheckpointIO#verify} (magic, header, layout, both
 * CRCs), described without its tensors.
 *
 * @param path the file's Hadoop path
 * @param step the training step stored in it (equal to the step in its name)
 * @param epoch the epoch stored in it
 * @param fileBytes the file's length
 */
public record CheckpointInfo(String path, long step, int epoch, long fileBytes) {}
