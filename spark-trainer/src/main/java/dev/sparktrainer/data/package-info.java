/** Data for the trainer: the sampler-aware partitioning ({@link dev.sparktrainer.data.SamplerPlan}), row stores (Java arrays or Arrow), the prefetching batch loader, and the Fashion-MNIST reader. */
package dev.sparktrainer.data;
