package dev.sparktrainer.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.sparktrainer.cpu.CpuDevice;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Device;
import dev.sparktrainer.engine.ParameterSet;
import dev.sparktrainer.engine.Tensor;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Note [step memory plan] in StepMemoryPlan: training with the plan gives the bits of training without it
 * (losses, the outputs read after backward, the parameters), whatever happens between steps (another batch size,
 * an evaluation forward, a step cut short), while the plan's slabs are smaller than the buffers they replace and
 * the later steps really run from the plan. The test models' buffers are all far below 1 MiB, so the tests plan
 * every buffer (Model#planMemory(0)).
 */
class StepMemoryPlanTest {
  private static final float LR = 0.05f;
  private final CpuDevice dev = new CpuDevice();

  @AfterEach
  void close() {
    dev.close();
  }

  /**
   * A small ResNet: stem conv-bn-relu-maxpool, an identity block, a stride-2 block with a downsampling shortcut,
   * another identity block (each followed by a fused ReLU), global average pool, flatten, linear.
   */
  static ModelSpec resnetLike() {
    ModelSpec.Builder b = ModelSpec.builder().input(3, 16, 16)
        .conv2d(ModelSpec.Conv.of(8, 3, 1, 1), false).batchNorm2d().relu().maxPool2d(2, 2, 0);
    b.residual(block(8, 1), List.of()).relu();
    b.residual(block(16, 2), ModelSpec.builder().conv2d(ModelSpec.Conv.of(16, 1, 2, 0), false).batchNorm2d()
        .layerList()).relu();
    b.residual(block(16, 1), List.of()).relu();
    return b.globalAvgPool().flatten().linear(5).build();
  }

  private static List<ModelSpec.LayerSpec> block(int width, int stride) {
    return ModelSpec.builder()
        .conv2d(ModelSpec.Conv.of(width, 3, stride, 1), false).batchNorm2d().relu()
        .conv2d(ModelSpec.Conv.of(width, 3, 1, 1), false).batchNorm2d().layerList();
  }

  /** An MLP with dropout (its output buffer is planned too). */
  static ModelSpec mlp() {
    return ModelSpec.mlp(24, new int[] {32, 16}, 5, "relu", 0.25f);
  }

  /** A model on {@code d}, initialised, with every buffer planned ({@code plan}) or without a plan. */
  private static Model model(ModelSpec spec, Device d, DType compute, boolean plan) {
    Model m = new Model(spec, d, compute);
    m.planMemory(plan ? 0 : -1);
    m.initialize(7);
    return m;
  }

  private record Batch(Tensor x, Tensor y) {}

  private static Batch batch(Device d, ModelSpec spec, int n, long seed) {
    SplittableRandom r = new SplittableRandom(seed);
    float[] x = new float[n * spec.inputSize()];
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) r.nextGaussian();
    }
    int[] y = new int[n];
    for (int i = 0; i < n; i++) {
      y[i] = r.nextInt(spec.outputSize());
    }
    Tensor xt = d.allocate(DType.FLOAT32, n, spec.inputSize());
    Tensor yt = d.allocate(DType.INT32, n);
    d.upload(x, 0, xt);
    d.upload(y, 0, yt);
    return new Batch(xt, yt);
  }

  /** What a run produced, step by step. */
  private static final class Run {
    final List<float[]> seen = new ArrayList<>(); // per step: the losses, then the output read after backward

    float[] params;

    void assertSame(Run expected, String what) {
      assertEquals(expected.seen.size(), seen.size(), what);
      for (int k = 0; k < seen.size(); k++) {
        assertArrayEquals(expected.seen.get(k), seen.get(k), what + ": record " + k);
      }
      assertArrayEquals(expected.params, params, what + ": parameters");
    }
  }

  /** One SGD step (forward, cross-entropy, backward, p -= lr g), recording the losses and the output. */
  private static void step(Model m, Batch b, long step, Run run) {
    Device d = m.device();
    Layer.Context ctx = new Layer.Context(true, 3L, step);
    m.zeroGrad();
    Tensor out = m.forward(b.x(), ctx);
    int n = out.dim(0);
    Tensor losses = d.allocate(DType.FLOAT32, n);
    Tensor dOut = d.allocate(m.outputGradDType(), out.shape());
    Loss.CROSS_ENTROPY.compute(d, out, b.y(), losses, dOut, 1f / n);
    m.backward(dOut, ctx);
    d.axpy(-LR, m.parameters().grads(), m.parameters().params());
    run.seen.add(download(d, losses));
    run.seen.add(download(d, out)); // as the trainer's countCorrect: the output must survive backward
  }

  private static float[] download(Device d, Tensor t) {
    float[] h = new float[Math.toIntExact(t.numel())];
    d.download(t, h, 0);
    return h;
  }

  /** {@code steps} steps on batches of {@code sizes[k % sizes.length]} rows. */
  private static Run train(Model m, ModelSpec spec, int steps, int... sizes) {
    Run run = new Run();
    for (int k = 0; k < steps; k++) {
      step(m, batch(m.device(), spec, sizes[k % sizes.length], 100 + k), k, run);
    }
    run.params = m.parametersToHost();
    return run;
  }

  @ParameterizedTest(name = "{0}")
  @EnumSource(value = DType.class, names = {"FLOAT32", "BFLOAT16"})
  void aResNetTrainsToTheSameBitsWithThePlan(DType compute) {
    ModelSpec spec = resnetLike();
    Run off = train(model(spec, dev, compute, false), spec, 5, 8);
    Model m = model(spec, dev, compute, true);
    Run on = train(m, spec, 5, 8);
    on.assertSame(off, "ResNet-like, " + compute);
    assertPlanRan(m, 1, 4);
    Model.PlannedMemory p = m.memoryPlans().get(0);
    assertEquals("float32(8, 768)", p.input());
    // The outputs of 3 stem layers, 14 block layers (the adds write over the last batch norms' outputs) and the
    // global pool; not the linear's (the model's output), and flatten's is a reshape. With bf16 compute, the
    // linear's bf16 copies of its input and weight, in a bf16 slab (its copy of dy is first made in backward).
    assertEquals(compute == DType.BFLOAT16 ? 20 : 18, p.buffers(), p.toString());
    assertEquals(compute == DType.BFLOAT16, p.slabBytes().containsKey(DType.BFLOAT16), p.toString());
  }

  @Test
  void anMlpTrainsToTheSameBitsWithThePlan() {
    ModelSpec spec = mlp();
    Run off = train(model(spec, dev, DType.FLOAT32, false), spec, 4, 6);
    Model m = model(spec, dev, DType.FLOAT32, true);
    train(m, spec, 4, 6).assertSame(off, "MLP");
    assertPlanRan(m, 1, 3);
  }

  /** The fused linear path (bf16 activations, the model's shared dx buffers), on a device that prefers it. */
  @Test
  void theFusedLinearPathTrainsToTheSameBitsWithThePlan() {
    ModelSpec spec = ModelSpec.mlp(24, new int[] {32, 16}, 5, "relu", 0f);
    Run off = train(model(spec, new Wrapped(dev).fusedLinear(), DType.BFLOAT16, false), spec, 4, 6);
    Model m = model(spec, new Wrapped(dev).fusedLinear(), DType.BFLOAT16, true);
    train(m, spec, 4, 6).assertSame(off, "fused linear path");
    assertPlanRan(m, 1, 3);
    assertTrue(m.memoryPlans().get(0).buffers() > 0, m.memoryPlans().toString());
  }

  private static void assertPlanRan(Model m, int plans, long replayed) {
    assertEquals(plans, m.memoryPlans().size(), "plans built: " + m.memoryPlans());
    assertEquals(replayed, m.memoryPlan().replayedSteps(), "steps run from a plan");
    assertEquals(0, m.memoryPlan().offPlanSteps(), "steps that left their plan");
  }

  @Test
  void thePlanIsSmallerThanTheBuffersItReplaced() {
    ModelSpec spec = resnetLike();
    Model m = model(spec, dev, DType.FLOAT32, true);
    train(m, spec, 2, 32);
    Model.PlannedMemory p = m.memoryPlans().get(0);
    long slab = p.totalSlabBytes();
    System.out.printf("step memory plan, ResNet-like at batch 32: slab %d bytes, max live %d bytes, replaced %d"
        + " bytes (%d buffers, %d gradients)%n", slab, p.maxLiveBytes(), p.replacedBytes(), p.buffers(),
        p.gradients());
    assertTrue(p.maxLiveBytes() <= slab, "the slab holds what is live at once: " + p);
    assertTrue(slab < 0.8 * p.replacedBytes(), "a real reduction: " + p);
  }

  @Test
  void aShortcutOutputDiesAtTheAddAndItsMemoryIsReusedInForward() {
    ModelSpec spec = resnetLike();
    Run[] runs = new Run[2];
    Model.PlannedMemory[] plans = new Model.PlannedMemory[2];
    for (int v = 0; v < 2; v++) {
      Model m = model(spec, dev, DType.FLOAT32, true);
      m.memoryPlan().forwardDeaths = v == 1;
      runs[v] = train(m, spec, 4, 32);
      assertPlanRan(m, 1, 3);
      plans[v] = m.memoryPlans().get(0);
    }
    runs[1].assertSame(runs[0], "with and without the shortcut's early death");
    // The downsample batch norm's output, (32, 16, 4, 4) fp32 = 32,768 bytes, is no longer live where the most
    // bytes are.
    assertEquals(plans[0].maxLiveBytes() - 32 * 16 * 4 * 4 * 4, plans[1].maxLiveBytes(),
        plans[0] + " vs " + plans[1]);
    assertTrue(plans[1].totalSlabBytes() < plans[0].totalSlabBytes(), plans[0] + " vs " + plans[1]);
  }

  @Test
  void anotherBatchSizeMidTrainingGetsAPlanOfItsOwn() {
    ModelSpec spec = resnetLike();
    int[] sizes = {8, 8, 5, 5, 8, 5, 8};
    Run off = new Run();
    Run on = new Run();
    Model a = model(spec, dev, DType.FLOAT32, false);
    Model m = model(spec, dev, DType.FLOAT32, true);
    for (int k = 0; k < sizes.length; k++) {
      step(a, batch(dev, spec, sizes[k], 100 + k), k, off);
      step(m, batch(dev, spec, sizes[k], 100 + k), k, on);
    }
    off.params = a.parametersToHost();
    on.params = m.parametersToHost();
    on.assertSame(off, "batch sizes 8 and 5");
    assertPlanRan(m, 2, sizes.length - 2);
    assertEquals("float32(5, 768)", m.memoryPlans().get(1).input());
  }

  @Test
  void anEvaluationForwardBetweenStepsGivesTheSameOutputs() {
    ModelSpec spec = resnetLike();
    Layer.Context eval = new Layer.Context(false, 3L, 0L);
    Run[] runs = new Run[2];
    Model[] models = new Model[2];
    for (int v = 0; v < 2; v++) {
      Model m = model(spec, dev, DType.FLOAT32, v == 1);
      Run run = new Run();
      for (int k = 0; k < 6; k++) {
        step(m, batch(dev, spec, 8, 100 + k), k, run);
        int n = k % 2 == 0 ? 8 : 3; // the training batch's shape (planned buffers) and another one
        run.seen.add(download(dev, m.forward(batch(dev, spec, n, 500 + k).x(), eval)));
      }
      run.params = m.parametersToHost();
      runs[v] = run;
      models[v] = m;
    }
    runs[1].assertSame(runs[0], "evaluation forwards between steps");
    assertPlanRan(models[1], 1, 5);
  }

  /**
   * Steps cut short, each followed by Model#discardStep as the trainer does after a failed CUDA graph capture: one
   * after its forward, one in the middle of its backward (an op that throws, as a library call refused under
   * capture, with gradients lent out). The later steps run from the plan and give the bits of the run without it.
   */
  @Test
  void discardStepLeavesThePlanUsable() {
    ModelSpec spec = resnetLike();
    Run[] runs = new Run[2];
    Model[] models = new Model[2];
    for (int v = 0; v < 2; v++) {
      Wrapped w = new Wrapped(dev);
      Model m = model(spec, w.device(), DType.FLOAT32, v == 1);
      Run run = new Run();
      long k = 0;
      step(m, batch(dev, spec, 8, 100), k++, run);
      step(m, batch(dev, spec, 8, 101), k++, run);
      m.forward(batch(dev, spec, 8, 102).x(), new Layer.Context(true, 3L, k++)); // no backward
      m.discardStep();
      step(m, batch(dev, spec, 8, 103), k++, run);
      w.failOn = "conv2dBackwardData";
      long at = k++;
      IllegalStateException e = assertThrows(IllegalStateException.class,
          () -> step(m, batch(dev, spec, 8, 104), at, new Run()));
      assertTrue(e.getMessage().contains("simulated"), e.getMessage());
      w.failOn = null;
      m.discardStep();
      for (int s = 0; s < 3; s++) {
        step(m, batch(dev, spec, 8, 105 + s), k++, run);
      }
      run.params = m.parametersToHost();
      runs[v] = run;
      models[v] = m;
    }
    runs[1].assertSame(runs[0], "steps after discardStep");
    // Replayed to the end: steps 2, 4, 6, 7, 8; the two cut short count as neither.
    assertPlanRan(models[1], 1, 5);
  }

  @Test
  void thePropertyTurnsThePlanOff() {
    ModelSpec spec = resnetLike();
    String before = System.getProperty(Model.MEMORY_PLAN_PROPERTY);
    try {
      System.setProperty(Model.MEMORY_PLAN_PROPERTY, "false");
      Model off = new Model(spec, dev);
      off.initialize(7);
      assertNull(off.memoryPlan());
      train(off, spec, 2, 8);
      assertTrue(off.memoryPlans().isEmpty());
      System.clearProperty(Model.MEMORY_PLAN_PROPERTY);
      Model on = new Model(spec, dev);
      on.initialize(7);
      assertNotNull(on.memoryPlan(), "on by default");
      train(on, spec, 2, 8);
      Model.PlannedMemory p = on.memoryPlans().get(0);
      assertEquals(0, p.buffers(), "layer buffers below 1 MiB stay the layers' own: " + p);
      assertTrue(p.gradients() > 0, "the gradients are planned whatever their size: " + p);
      assertEquals(1, on.memoryPlan().replayedSteps());
    } finally {
      if (before == null) {
        System.clearProperty(Model.MEMORY_PLAN_PROPERTY);
      } else {
        System.setProperty(Model.MEMORY_PLAN_PROPERTY, before);
      }
    }
  }

  /**
   * A layer that copies its input, and whose backward, when {@code detour} is set, first draws a scratch gradient
   * as well: a step with another sequence of gradients than the recorded one.
   */
  static final class Detour extends Layer {
    boolean detour;

    @Override
    public int[] outputShape(int[] inputShape) {
      return inputShape.clone();
    }

    @Override
    public Tensor forward(Tensor x, Context ctx) {
      Tensor y = buffer("y", x.dtype(), x.shape());
      device.copy(x, y);
      return y;
    }

    @Override
    public Tensor backward(Tensor dy, Context ctx, boolean needInputGrad) {
      Tensor scratch = detour ? gradBuffer("scratch", dy.dtype(), dy.shape()) : null;
      if (scratch != null) {
        device.copy(dy, scratch);
      }
      Tensor dx = gradBuffer("dx", dy.dtype(), dy.shape());
      device.copy(scratch != null ? scratch : dy, dx);
      releaseGrad(scratch);
      return dx;
    }
  }

  /**
   * A step whose gradients differ from the recording (here: one more) leaves the plan at the difference and takes
   * the rest from the dynamic pool, with the same bits; the next step runs from the plan again. Driven as Model
   * drives its layers (a model cannot hold a test's layer).
   */
  @Test
  void aStepThatLeavesItsPlanFallsBackToTheDynamicPool() {
    float[][] grads = new float[2][];
    float[][] outs = new float[2][];
    StepMemoryPlan plan = null;
    for (int v = 0; v < 2; v++) {
      Detour detour = new Detour();
      Sequential net = new Sequential(List.of(new Linear(16, true), new Detour(),
          new Activation(Activation.Kind.RELU), new Linear(12, true), detour, new Linear(4, true)));
      ParameterSet.Builder pb = ParameterSet.builder();
      net.declare("", new int[] {10}, pb);
      ParameterSet ps = pb.build(dev);
      net.bind(dev, ps);
      float[] host = new float[Math.toIntExact(ps.totalElements())];
      net.initialize(ps, host, new SplittableRandom(4));
      dev.upload(host, 0, ps.params());
      GradientPool pool = new GradientPool(dev);
      net.attachPool(pool);
      StepMemoryPlan p = v == 1 ? new StepMemoryPlan(dev, pool, 0) : null;
      pool.attachPlan(p);
      List<float[]> seen = new ArrayList<>();
      for (int k = 0; k < 5; k++) {
        detour.detour = k == 2;
        Batch b = batch(dev, ModelSpec.mlp(10, new int[0], 4, "relu", 0f), 6, 200 + k);
        Layer.Context ctx = new Layer.Context(true, 3L, k);
        if (p != null) {
          p.beginStep(b.x(), true);
        }
        Tensor out = net.forward(b.x(), ctx);
        if (p != null) {
          p.endForward(out);
        }
        Tensor losses = dev.allocate(DType.FLOAT32, 6);
        Tensor dOut = dev.allocate(DType.FLOAT32, 6, 4);
        Loss.CROSS_ENTROPY.compute(dev, out, b.y(), losses, dOut, 1f / 6);
        dev.fill(ps.grads(), 0f);
        net.runBackward(dOut, ctx, false);
        pool.checkAllReturned();
        if (p != null) {
          p.endStep();
        }
        dev.axpy(-LR, ps.grads(), ps.params());
        seen.add(download(dev, losses));
      }
      grads[v] = download(dev, ps.grads());
      outs[v] = flatten(seen);
      plan = p;
    }
    assertArrayEquals(outs[0], outs[1], "losses");
    assertArrayEquals(grads[0], grads[1], "gradients");
    assertEquals(1, plan.built().size());
    assertEquals(3, plan.replayedSteps(), "steps 1, 3 and 4 run from the plan");
    assertEquals(1, plan.offPlanSteps(), "step 2 left it");
  }

  private static float[] flatten(List<float[]> parts) {
    int n = parts.stream().mapToInt(a -> a.length).sum();
    float[] all = new float[n];
    int at = 0;
    for (float[] a : parts) {
      System.arraycopy(a, 0, all, at, a.length);
      at += a.length;
    }
    return all;
  }

  /** The planner: random intervals and sizes; items that meet in time never meet in memory. */
  @Test
  void thePlannerKeepsItemsThatMeetInTimeApart() {
    SplittableRandom r = new SplittableRandom(9);
    for (int trial = 0; trial < 200; trial++) {
      int n = 1 + r.nextInt(40);
      int clock = 1 + r.nextInt(60);
      long[] size = new long[n];
      int[] start = new int[n];
      int[] end = new int[n];
      for (int i = 0; i < n; i++) {
        size[i] = StepMemoryPlan.align(1 + r.nextInt(5000));
        start[i] = r.nextInt(clock);
        end[i] = start[i] + r.nextInt(clock - start[i]);
      }
      long[] off = StepMemoryPlan.place(size, start, end);
      long top = 0;
      for (int i = 0; i < n; i++) {
        assertEquals(0, off[i] % StepMemoryPlan.ALIGN, "aligned");
        top = Math.max(top, off[i] + size[i]);
        for (int j = 0; j < i; j++) {
          boolean inTime = start[i] <= end[j] && start[j] <= end[i];
          boolean inMemory = off[i] < off[j] + size[j] && off[j] < off[i] + size[i];
          assertTrue(!(inTime && inMemory), "items " + i + " and " + j + " of trial " + trial + " overlap");
        }
      }
      assertTrue(top >= StepMemoryPlan.maxLive(size, start, end, clock), "the slab holds what is live at once");
    }
    // Three buffers live one after the other share one place; the largest of two live together comes first.
    assertArrayEquals(new long[] {0, 0, 0}, StepMemoryPlan.place(new long[] {512, 256, 768}, new int[] {0, 2, 4},
        new int[] {1, 3, 5}));
    assertArrayEquals(new long[] {768, 0}, StepMemoryPlan.place(new long[] {256, 768}, new int[] {0, 0},
        new int[] {3, 3}));
  }

  /**
   * A CPU device through a dynamic proxy: optionally answers that it prefers the fused linear path, throws on the op
   * named {@code failOn} (a library call that fails midway through a step), and counts the calls of the ops named in
   * {@code counted} into {@code calls}.
   */
  static final class Wrapped {
    final CpuDevice cpu;
    boolean fused;
    String failOn;
    final java.util.Set<String> counted = new java.util.HashSet<>();
    final java.util.Map<String, Integer> calls = new java.util.TreeMap<>();

    Wrapped(CpuDevice cpu) {
      this.cpu = cpu;
    }

    Device fusedLinear() {
      fused = true;
      return device();
    }

    Device device() {
      return (Device) Proxy.newProxyInstance(Device.class.getClassLoader(), new Class<?>[] {Device.class},
          (proxy, method, args) -> {
            String n = method.getName();
            if (method.getDeclaringClass() == Object.class) {
              return switch (n) {
                case "equals" -> proxy == args[0];
                case "hashCode" -> System.identityHashCode(proxy);
                default -> "Wrapped[" + cpu + "]";
              };
            }
            if (n.equals("prefersFusedLinear") && fused) {
              return true;
            }
            if (n.equals(failOn)) {
              throw new IllegalStateException("simulated: " + n + " failed");
            }
            if (counted.contains(n)) {
              calls.merge(n, 1, Integer::sum);
            }
            try {
              return method.invoke(cpu, args);
            } catch (InvocationTargetException e) {
              throw e.getCause();
            }
          });
    }
  }
}
