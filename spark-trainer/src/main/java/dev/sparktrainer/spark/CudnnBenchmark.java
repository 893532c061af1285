package dev.sparktrainer.spark;

import dev.sparktrainer.cuda.CudaDevice;

/**
 * The estimator's {@code cudnnBenchmark} param inside a barrier task.
 *
 * <h2>Note [cudnn benchmark per executor JVM]</h2>
 * CudaDevice reads the system property {@value #PROPERTY} once, when the class is initialised, i.e. when the
 * executor JVM creates its first CUDA device. A task therefore sets the property before it creates its device
 * ({@link #apply}); where the class was initialised earlier with the other value (an earlier fit in the same
 * executor, or the executor's own {@code -D}), the setting cannot change any more, and the task logs a warning
 * ({@link #mismatch}) instead of failing: training is still correct, only the convolution algorithms are
 * chosen the other way. With {@code false} a task leaves the property as it found it, except where an earlier
 * fit of this JVM set it, so that {@code -Dsparktrainer.cudnn.benchmark=true} in
 * spark.executor.extraJavaOptions still works.
 */
final class CudnnBenchmark {
  static final String PROPERTY = "sparktrainer.cudnn.benchmark";
  private static boolean setByUs; // guarded by CudnnBenchmark.class: the property is true because a fit set it

  private CudnnBenchmark() {}

  /**
   * Before the task's CUDA device is created: {@code wanted} true sets the property; false clears it where an
   * earlier fit set it and leaves it alone otherwise. Returns the value a CudaDevice initialised now reads.
   */
  static synchronized boolean apply(boolean wanted) {
    if (wanted) {
      if (!Boolean.getBoolean(PROPERTY)) {
        System.setProperty(PROPERTY, "true");
        setByUs = true;
      }
    } else if (setByUs) {
      System.clearProperty(PROPERTY);
      setByUs = false;
    }
    return Boolean.getBoolean(PROPERTY);
  }

  /**
   * The setting CudaDevice actually uses; call it only after a CudaDevice was created (reading the field
   * initialises the class). Null when it cannot be read (the field was renamed), so no check is made.
   */
  static Boolean inEffect() {
    try {
      java.lang.reflect.Field f = CudaDevice.class.getDeclaredField("CUDNN_SEARCH");
      f.setAccessible(true);
      return f.getInt(null) != 0;
    } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
      return null;
    }
  }

  /**
   * The warning for a device that runs with another setting than this task expected ({@code expected}: what
   * {@link #apply} returned), or null when they agree or the setting in effect is unknown.
   */
  static String mismatch(boolean wanted, boolean expected, Boolean inEffect) {
    if (inEffect == null || inEffect == expected) {
      return null;
    }
    return "cudnnBenchmark=" + wanted + " is not in effect: this executor JVM created its first CUDA device with "
        + PROPERTY + "=" + inEffect + " (an earlier fit or the executor's -D option; the property is read once "
        + "per JVM), so this fit " + (inEffect ? "times the convolution algorithms once per shape"
        : "uses cuDNN's heuristic algorithm choice") + ". Training is otherwise unaffected. To change it, run on "
        + "fresh executors (a new Spark application)" + (wanted ? ", or start the executors with -D" + PROPERTY
        + "=true in spark.executor.extraJavaOptions" : "");
  }
}
