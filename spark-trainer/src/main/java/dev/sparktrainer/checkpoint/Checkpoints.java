package dev.sparktrainer.checkpoint;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Shape;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.optim.Optimizer;
import dev.sparktrainer.optim.OptimizerConfig;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Moves a model's parameters and its optimizer's state between the device and a {@link CheckpointData}.
 *
 * <p>Tensors are named {@code param/<name>} for each {@link ParameterSet} entry and
 * {@code optim/<state>/<name>} for each optimizer state buffer, sliced with the parameters' layout; only the
 * real elements are stored, never the alignment padding (which is zero and stays zero).
 */
public final class Checkpoints {
  /** Prefix of parameter tensors. */
  public static final String PARAM_PREFIX = "param/";
  /** Prefix of optimizer state tensors. */
  public static final String OPTIM_PREFIX = "optim/";
  private static final int MAX_PROBLEMS = 5;

  private Checkpoints() {}

  /** The checkpoint name of a parameter: {@code param/<name>}. */
  public static String paramName(String parameter) {
    return PARAM_PREFIX + parameter;
  }

  /** The checkpoint name of one parameter's slice of an optimizer state: {@code optim/<state>/<name>}. */
  public static String stateName(String state, String parameter) {
    return OPTIM_PREFIX + state + "/" + parameter;
  }

  /**
   * Downloads the model's parameters and the optimizer's state and steps into a host checkpoint.
   *
   * @param extra the trainer's free JSON object (sampler position, seeds, schedule...), or null for {}
   */
  public static CheckpointData capture(Model model, Optimizer opt, long step, int epoch, JsonNode extra) {
    ParameterSet ps = model.parameters();
    Device device = model.device();
    ObjectNode optJson = opt.config().toJsonNode();
    optJson.put("steps", opt.steps());
    CheckpointData.Builder b = CheckpointData.builder().step(step).epoch(epoch)
        .modelSpec(model.spec().toJsonNode()).optimizer(optJson).extra(extra);
    addSlices(b, PARAM_PREFIX, ps.params(), ps, device);
    for (Map.Entry<String, Tensor> s : opt.state().entrySet()) {
      checkFlat(s.getKey(), s.getValue(), ps);
      addSlices(b, OPTIM_PREFIX + s.getKey() + "/", s.getValue(), ps, device);
    }
    return b.build();
  }

  private static void checkFlat(String state, Tensor t, ParameterSet ps) {
    if (t.numel() != ps.params().numel()) {
      throw new IllegalStateException("optimizer state '" + state + "' has " + t.numel()
          + " elements, the parameter buffer " + ps.params().numel() + ": is the optimizer for this model?");
    }
  }

  private static void addSlices(CheckpointData.Builder b, String prefix, Tensor flat, ParameterSet ps,
      Device device) {
    if (flat.dtype() == DType.INT32) {
      int[] host = new int[flat.size()];
      device.download(flat, host, 0);
      for (ParameterSet.Entry e : ps.entries()) {
        b.tensor(prefix + e.name(), TensorData.fromInts(e.shape(), host, Math.toIntExact(e.offset())));
      }
    } else {
      float[] host = new float[flat.size()];
      device.download(flat, host, 0);
      for (ParameterSet.Entry e : ps.entries()) {
        b.tensor(prefix + e.name(), TensorData.fromFloats(flat.dtype(), e.shape(), host,
            Math.toIntExact(e.offset())));
      }
    }
  }

  /**
   * Loads a checkpoint into a model and its optimizer. Everything is checked before any buffer is touched:
   * the checkpoint's model spec must equal the model's; its optimizer type must equal this optimizer's;
   * it must hold exactly the tensors this model and optimizer have, with the same shapes and dtypes. The
   * optimizer's hyper-parameters are the job's, not the checkpoint's (so a resumed job may change, e.g.,
   * the learning rate); its step counter comes from the checkpoint.
   *
   * @throws CheckpointException when the checkpoint does not fit, e.g. "checkpoint is for model X, this
   *     job trains Y"; the model and optimizer are then unchanged
   */
  public static void restore(CheckpointData data, Model model, Optimizer opt) throws CheckpointException {
    // 1. the model spec
    ModelSpec saved;
    try {
      saved = ModelSpec.fromJsonNode(data.modelSpec());
    } catch (RuntimeException e) { // IllegalArgumentException, or arithmetic on absurd sizes
      throw new CheckpointException("checkpoint holds an invalid model spec: " + e.getMessage(), e);
    }
    if (!saved.equals(model.spec())) {
      throw new CheckpointException("checkpoint is for model " + saved + ", this job trains " + model.spec()
          + " (use another checkpoint directory, or the model spec the checkpoint was made with)");
    }
    // 2. the optimizer type
    ObjectNode optJson = data.optimizer();
    optJson.remove("steps");
    OptimizerConfig savedOpt;
    try {
      savedOpt = OptimizerConfig.fromJsonNode(optJson);
    } catch (RuntimeException e) {
      throw new CheckpointException("checkpoint holds an invalid optimizer config: " + e.getMessage(), e);
    }
    if (savedOpt.type() != opt.config().type()) {
      throw new CheckpointException("checkpoint was written by optimizer " + savedOpt + ", this job uses "
          + opt.config() + "; their states differ");
    }
    // 3. the tensors: exactly the expected names, shapes and dtypes
    ParameterSet ps = model.parameters();
    Map<String, Tensor> flats = new LinkedHashMap<>();
    flats.put(PARAM_PREFIX, ps.params());
    for (Map.Entry<String, Tensor> s : opt.state().entrySet()) {
      checkFlat(s.getKey(), s.getValue(), ps);
      flats.put(OPTIM_PREFIX + s.getKey() + "/", s.getValue());
    }
    List<String> problems = new ArrayList<>();
    int expected = 0;
    for (Map.Entry<String, Tensor> f : flats.entrySet()) {
      for (ParameterSet.Entry e : ps.entries()) {
        expected++;
        String name = f.getKey() + e.name();
        TensorData t = data.tensor(name);
        DType dtype = f.getValue().dtype();
        if (t == null) {
          problems.add("it lacks '" + name + "' " + dtype.wireName() + Shape.str(e.shape()));
        } else if (t.dtype() != dtype || !Arrays.equals(t.shape(), e.shape())) {
          problems.add("'" + name + "' is " + t + " in the checkpoint, " + dtype.wireName()
              + Shape.str(e.shape()) + " here");
        }
      }
    }
    if (data.tensors().size() != expected || !problems.isEmpty()) {
      for (String name : data.tensors().keySet()) {
        if (!expectedName(name, flats, ps)) {
          problems.add("it has '" + name + "', which this model and optimizer do not");
        }
      }
      throw new CheckpointException("checkpoint does not fit this model and optimizer: "
          + String.join("; ", problems.subList(0, Math.min(MAX_PROBLEMS, problems.size())))
          + (problems.size() > MAX_PROBLEMS ? "; and " + (problems.size() - MAX_PROBLEMS) + " more" : ""));
    }

    // 4. load (nothing can fail from here on but the device)
    for (Map.Entry<String, Tensor> f : flats.entrySet()) {
      upload(data, f.getKey(), f.getValue(), ps, model.device());
    }
    opt.setSteps(data.optimizerSteps());
  }

  private static boolean expectedName(String name, Map<String, Tensor> flats, ParameterSet ps) {
    for (String prefix : flats.keySet()) {
      if (name.startsWith(prefix) && ps.indexOf(name.substring(prefix.length())) >= 0) {
        return true;
      }
    }
    return false;
  }

  /** Assembles one flat buffer on the host (padding zero) and uploads it in one call. */
  private static void upload(CheckpointData data, String prefix, Tensor flat, ParameterSet ps, Device device) {
    switch (flat.dtype()) {
      case FLOAT32 -> {
        float[] host = new float[flat.size()];
        for (ParameterSet.Entry e : ps.entries()) {
          data.tensor(prefix + e.name()).copyFloatsTo(host, Math.toIntExact(e.offset()));
        }
        device.upload(host, 0, flat);
      }
      case INT32 -> {
        int[] host = new int[flat.size()];
        for (ParameterSet.Entry e : ps.entries()) {
          data.tensor(prefix + e.name()).copyIntsTo(host, Math.toIntExact(e.offset()));
        }
        device.upload(host, 0, flat);
      }
      default -> {
        int bytes = flat.dtype().bytes();
        byte[] host = new byte[Math.multiplyExact(flat.size(), bytes)];
        for (ParameterSet.Entry e : ps.entries()) {
          TensorData t = data.tensor(prefix + e.name());
          System.arraycopy(t.array(), 0, host, Math.toIntExact(e.offset() * bytes), t.byteSize());
        }
        device.upload(ByteBuffer.wrap(host).order(ByteOrder.LITTLE_ENDIAN), flat);
      }
    }
  }
}
