package dev.sparktrainer.spark;

import dev.sparktrainer.train.EpochStats;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;

/**
 * The progress protocol (big-endian, java.io.Data* encoding).
 *
 * <pre>
 * server -> client  int MAGIC, int VERSION, byte[32] nonce
 * client -> server  int rank, byte[32] HMAC-SHA256(token, PURPOSE || 0 || nonce || rank || world)
 * server -> client  byte 1 (accepted) | byte 0 (rejected, then the server closes)
 * client -> server  frames until EOF: byte type, then
 *   STEP  int epoch, int epochs, long step, long totalSteps, long samples, double seconds, double eta, double loss
 *   EPOCH int epoch, long samples, double loss, accuracy, seconds, dataWait, compute, comm, long skippedSteps
 *   DONE  long peakDeviceMemoryBytes, UTF device
 *   VALIDATION int epoch, long rows, double loss, double accuracy
 * </pre>
 * The server attaches the authenticated rank to every frame, so a client cannot speak for another rank.
 */
final class ProgressWire {
  static final int MAGIC = 0x53545047; // "STPG"
  static final int VERSION = 2; // 2: VALIDATION frames
  static final String PURPOSE = "spark-trainer progress v1: client";
  /** The handshake: a client states its rank only. */
  static final DriverHandshake HANDSHAKE = new DriverHandshake(MAGIC, VERSION, PURPOSE, 0);
  static final byte STEP = 1;
  static final byte EPOCH = 2;
  static final byte DONE = 3;
  static final byte VALIDATION = 4;

  private ProgressWire() {}

  static byte[] mac(String token, byte[] nonce, int rank, int world) {
    return HANDSHAKE.mac(token, nonce, rank, world);
  }

  static byte[] encode(ProgressEvent e) {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream(96);
    try (DataOutputStream out = new DataOutputStream(bytes)) {
      if (e instanceof ProgressEvent.Step s) {
        out.writeByte(STEP);
        out.writeInt(s.epoch());
        out.writeInt(s.epochs());
        out.writeLong(s.step());
        out.writeLong(s.totalSteps());
        out.writeLong(s.samples());
        out.writeDouble(s.seconds());
        out.writeDouble(s.etaSeconds());
        out.writeDouble(s.loss());
      } else if (e instanceof ProgressEvent.Epoch ep) {
        EpochStats s = ep.stats();
        out.writeByte(EPOCH);
        out.writeInt(s.epoch());
        out.writeLong(s.samples());
        out.writeDouble(s.loss());
        out.writeDouble(s.accuracy());
        out.writeDouble(s.seconds());
        out.writeDouble(s.dataWaitSeconds());
        out.writeDouble(s.computeSeconds());
        out.writeDouble(s.commSeconds());
        out.writeLong(s.skippedSteps());
      } else if (e instanceof ProgressEvent.Validation v) {
        out.writeByte(VALIDATION);
        out.writeInt(v.epoch());
        out.writeLong(v.rows());
        out.writeDouble(v.loss());
        out.writeDouble(v.accuracy());
      } else if (e instanceof ProgressEvent.Done d) {
        out.writeByte(DONE);
        out.writeLong(d.peakDeviceMemoryBytes());
        out.writeUTF(d.device() == null ? "" : d.device());
      }
    } catch (IOException ex) {
      throw new IllegalStateException(ex); // in-memory stream
    }
    return bytes.toByteArray();
  }

  /** Reads one frame for {@code rank}; null at a clean end of stream. */
  static ProgressEvent read(DataInputStream in, int rank) throws IOException {
    int type = in.read();
    if (type < 0) {
      return null;
    }
    return switch (type) {
      case STEP -> new ProgressEvent.Step(rank, in.readInt(), in.readInt(), in.readLong(), in.readLong(),
          in.readLong(), in.readDouble(), in.readDouble(), in.readDouble());
      case EPOCH -> {
        int epoch = in.readInt();
        long samples = in.readLong();
        yield new ProgressEvent.Epoch(rank, new EpochStats(epoch, rank, samples, in.readDouble(), in.readDouble(),
            in.readDouble(), in.readDouble(), in.readDouble(), in.readDouble(), in.readLong()));
      }
      case DONE -> new ProgressEvent.Done(rank, in.readLong(), in.readUTF());
      case VALIDATION -> new ProgressEvent.Validation(rank, in.readInt(), in.readLong(), in.readDouble(),
          in.readDouble());
      default -> throw new IOException("unknown progress frame type " + type);
    };
  }
}
