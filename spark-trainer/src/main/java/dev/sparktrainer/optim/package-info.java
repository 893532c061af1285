/** Fused optimizers over the flat buffers (SGD with momentum/Nesterov/weight decay, AdamW) and learning-rate schedules. */
package dev.sparktrainer.optim;
