/** The engine: the {@link dev.sparktrainer.engine.Device} op set both backends implement, tensors as views, and the flat parameter/gradient buffers ({@link dev.sparktrainer.engine.ParameterSet}). Knows no Spark. */
package dev.sparktrainer.engine;
