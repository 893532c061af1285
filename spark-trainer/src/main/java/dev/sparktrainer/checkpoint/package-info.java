/**
 * Safe checkpoints: model parameters, optimizer state and trainer position in one self-describing file that
 * is read without deserializing any class.
 *
 * <h2>Use</h2>
 * <pre>{@code
 * CheckpointData ckpt = Checkpoints.capture(model, optimizer, step, epoch, extra);   // device -> host
 * CheckpointIO.write(ckpt, CheckpointIO.pathFor(dir, step), hadoopConf);             // temp + rename
 * CheckpointIO.keepLast(dir, 3, hadoopConf);
 * ...
 * Optional<CheckpointData> last = CheckpointIO.latest(dir, hadoopConf);               // skips corrupt files
 * if (last.isPresent()) Checkpoints.restore(last.get(), model, optimizer);            // validates, then loads
 * }</pre>
 *
 * <h2>File format, version 1</h2>
 * <pre>
 * offset 0   8 bytes   magic "STCKPT01" (ASCII)
 * offset 8   8 bytes   H, the header length, little-endian (1 .. 64 MiB)
 * offset 16  H bytes   header: one JSON object, UTF-8
 * 16 + H     the data section: raw little-endian tensor bytes, to the end of the file
 * </pre>
 * Header members:
 * <ul>
 *   <li>{@code formatVersion}: 1;</li>
 *   <li>{@code step} (long &gt;= 0), {@code epoch} (int &gt;= 0);</li>
 *   <li>{@code modelSpec}: the model's {@code ModelSpec} JSON;</li>
 *   <li>{@code optimizer}: the {@code OptimizerConfig} JSON plus {@code "steps"} (long &gt;= 0);</li>
 *   <li>{@code extra}: a free JSON object for the trainer (sampler position, seeds, schedule...);</li>
 *   <li>{@code tensors}: a list of {@code {name, dtype, shape, offset, nbytes}}; dtype is "float32", "int32"
 *       or "bfloat16"; offset is a byte offset into the data section; nbytes = product(shape) * dtype size;
 *       ranges do not overlap. Model parameters are stored as {@code param/<name>}, each optimizer state
 *       buffer sliced the same way as {@code optim/<state>/<name>} (real elements only, no padding);</li>
 *   <li>{@code dataBytes}: the length of the data section, which ends the file;</li>
 *   <li>{@code dataCrc32}: CRC-32 of the data section;</li>
 *   <li>{@code headerCrc32}: CRC-32 of the header bytes before this member, as 8 lower-case hex digits. It
 *       must be the last member, written exactly as <code>,"headerCrc32":"xxxxxxxx"&#125;</code> at the end of the
 *       header, so a reader checks it before parsing any JSON. With both CRCs, a flipped bit anywhere in
 *       the file is detected, including in step, epoch and extra.</li>
 * </ul>
 * Unknown members are errors (a newer layout gets a new formatVersion).
 *
 * <h2>Note [reading untrusted checkpoints]</h2>
 * A checkpoint directory is shared storage: files can be truncated by a crash, damaged by storage, or be
 * something else entirely. {@link dev.sparktrainer.checkpoint.CheckpointIO#read} therefore checks the
 * magic, bounds the header length by 64 MiB and by the file length, checks the header CRC, parses the JSON
 * with nesting limits and duplicate-key detection, checks every member's presence and type, every dtype,
 * shape and size (overflow-safe), that the tensor ranges are disjoint and inside the data section and that
 * the data section fills the rest of the file, all before allocating any tensor memory. Tensor memory is
 * then bounded by the real file length, and the data CRC is checked as it is read. Every failure is a
 * {@link dev.sparktrainer.checkpoint.CheckpointException} whose message says what is wrong.
 */
package dev.sparktrainer.checkpoint;
