/** The Spark integration: driver-side validation and planning, the sampler-aware shuffle, the barrier stage and its task body, batched inference, and the Kryo registrator. */
package dev.sparktrainer.spark;
