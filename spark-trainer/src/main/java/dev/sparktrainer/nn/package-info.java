/** Layers with explicit, mirrored forward and backward passes, losses, and {@link dev.sparktrainer.nn.ModelSpec}, the JSON/builder description of a model. Layers call only the Device op set; they never name a backend. */
package dev.sparktrainer.nn;
