package dev.sparktrainer.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

/**
 * Records the measured errors of the GPU tests (what, error, tolerance) so the device run can report the
 * numbers, not only pass/fail: appended to the file named by -Dsparktrainer.gpu.report when set.
 */
final class CudaTestLog {
  private CudaTestLog() {}

  static synchronized void record(String what, double err, double tol) {
    note(String.format("%-70s err %.3e  tol %.0e", what, err, tol));
  }

  static synchronized void note(String line) {
    String file = System.getProperty("sparktrainer.gpu.report");
    if (file == null) {
      return;
    }
    try {
      Files.writeString(Path.of(file), line + System.lineSeparator(), StandardCharsets.UTF_8,
          StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
