package dev.sparktrainer.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** A directory of ckpt-<step>.stckpt files: listing, resuming from the newest valid one, pruning. */
class CheckpointDirectoryTest {
  private static CheckpointData sample;
  private final Configuration conf = new Configuration();

  @BeforeAll
  static void makeSample() {
    sample = CheckpointFixtures.sample();
  }

  private static CheckpointData atStep(long step) {
    CheckpointData.Builder b = CheckpointData.builder().step(step).epoch(sample.epoch())
        .modelSpec(sample.modelSpec()).optimizer(sample.optimizer()).extra(sample.extra());
    sample.tensors().forEach(b::tensor);
    return b.build();
  }

  private static List<String> names(Path dir) throws IOException {
    try (Stream<Path> s = Files.list(dir)) {
      return s.map(p -> p.getFileName().toString()).sorted().toList();
    }
  }

  @Test
  void namesAndSteps() {
    assertEquals("ckpt-0.stckpt", CheckpointIO.fileName(0));
    assertEquals("ckpt-1200.stckpt", CheckpointIO.fileName(1200));
    assertEquals("hdfs://nn:8020/runs/a/ckpt-5.stckpt", CheckpointIO.pathFor("hdfs://nn:8020/runs/a", 5));
    assertEquals(1200, CheckpointIO.stepOf("ckpt-1200.stckpt"));
    assertEquals(-1, CheckpointIO.stepOf("ckpt-.stckpt"));
    assertEquals(-1, CheckpointIO.stepOf("ckpt-12.stckpt.crc"));
    assertEquals(-1, CheckpointIO.stepOf(".ckpt-12.stckpt.0b6e.tmp"));
    assertEquals(-1, CheckpointIO.stepOf("ckpt-99999999999999999999.stckpt"));
    assertThrows(IllegalArgumentException.class, () -> CheckpointIO.fileName(-1));
  }

  @Test
  void resumesFromTheNewestValidCheckpointAndPrunes(@TempDir Path tmp) throws IOException {
    String dir = "file://" + tmp.toAbsolutePath() + "/ckpts";
    for (long step : new long[] {10, 20, 30}) {
      CheckpointIO.write(atStep(step), CheckpointIO.pathFor(dir, step), conf);
    }
    Path d = tmp.resolve("ckpts");
    Files.writeString(d.resolve("notes.txt"), "not a checkpoint");
    Files.writeString(d.resolve("ckpt-x.stckpt"), "not a checkpoint either");

    assertEquals(List.of(10L, 20L, 30L), CheckpointIO.listValid(dir, conf).stream().map(CheckpointInfo::step).toList());
    assertEquals(30, CheckpointIO.latest(dir, conf).orElseThrow().step());

    // The newest one is truncated (a crash mid-copy, a full disk...), one more is garbage.
    byte[] newest = Files.readAllBytes(d.resolve("ckpt-30.stckpt"));
    Files.write(d.resolve("ckpt-30.stckpt"), Arrays.copyOf(newest, newest.length / 2));
    Files.writeString(d.resolve("ckpt-40.stckpt"), "garbage");

    List<String> skipped = new ArrayList<>();
    Optional<CheckpointData> last = CheckpointIO.latest(dir, conf, (path, e) -> {
      assertTrue(e.getMessage().contains("is corrupt or truncated"), e.getMessage());
      skipped.add(path.substring(path.lastIndexOf('/') + 1));
    });
    assertEquals(atStep(20), last.orElseThrow());
    assertEquals(List.of("ckpt-40.stckpt", "ckpt-30.stckpt"), skipped);
    List<CheckpointInfo> valid = CheckpointIO.listValid(dir, conf);
    assertEquals(List.of(10L, 20L), valid.stream().map(CheckpointInfo::step).toList());
    assertEquals(2, valid.get(1).epoch());
    assertEquals(newest.length, valid.get(1).fileBytes());

    // keepLast goes by name: the two highest steps stay (30 and 40, even though broken), older ones go.
    List<String> deleted = CheckpointIO.keepLast(dir, 2, conf);
    assertEquals(2, deleted.size());
    assertEquals(List.of("ckpt-30.stckpt", "ckpt-40.stckpt", "ckpt-x.stckpt", "notes.txt"), names(d));
    assertTrue(CheckpointIO.latest(dir, conf, (p, e) -> { }).isEmpty());
    assertThrows(IllegalArgumentException.class, () -> CheckpointIO.keepLast(dir, 0, conf));
  }

  @Test
  void aFileWhoseNameAndStepDisagreeIsSkipped(@TempDir Path tmp) throws IOException {
    String dir = "file://" + tmp.toAbsolutePath();
    CheckpointIO.write(atStep(5), CheckpointIO.pathFor(dir, 5), conf);
    Files.copy(tmp.resolve("ckpt-5.stckpt"), tmp.resolve("ckpt-9.stckpt"));
    CheckpointException e = assertThrows(CheckpointException.class,
        () -> CheckpointIO.verify(CheckpointIO.pathFor(dir, 9), conf));
    assertTrue(e.getMessage().contains("is named for step 9 but holds step 5"), e.getMessage());
    assertEquals(5, CheckpointIO.latest(dir, conf, (p, x) -> { }).orElseThrow().step());
    assertEquals(List.of(5L), CheckpointIO.listValid(dir, conf).stream().map(CheckpointInfo::step).toList());
  }

  @Test
  void aMissingDirectoryHasNoCheckpoints(@TempDir Path tmp) throws IOException {
    String dir = "file://" + tmp.toAbsolutePath() + "/never-written";
    assertTrue(CheckpointIO.latest(dir, conf).isEmpty());
    assertTrue(CheckpointIO.listValid(dir, conf).isEmpty());
    assertTrue(CheckpointIO.keepLast(dir, 3, conf).isEmpty());
  }
}
