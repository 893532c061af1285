/** The training loop of one rank ({@link dev.sparktrainer.train.Trainer}): micro-batches, one all-reduce of the flat gradient buffer per step, clipping, fused optimizer step, checkpoints and resume, metrics. Knows no Spark. */
package dev.sparktrainer.train;
