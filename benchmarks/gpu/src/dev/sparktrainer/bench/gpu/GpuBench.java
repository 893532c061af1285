package dev.sparktrainer.bench.gpu;

import dev.sparktrainer.comm.Communicator;
import dev.sparktrainer.comm.LocalCommunicator;
import dev.sparktrainer.comm.LocalLauncher;
import dev.sparktrainer.comm.WorkerContext;
import dev.sparktrainer.cuda.Cuda;
import dev.sparktrainer.cuda.CudaDevice;
import dev.sparktrainer.cuda.GpuSelector;
import dev.sparktrainer.cuda.NcclCommunicator;
import dev.sparktrainer.data.FashionMnist;
import dev.sparktrainer.data.HeapRowStore;
import dev.sparktrainer.data.SamplerPlan;
import dev.sparktrainer.engine.DType;
import dev.sparktrainer.engine.Tensor;
import dev.sparktrainer.nn.Layer;
import dev.sparktrainer.nn.Loss;
import dev.sparktrainer.nn.Model;
import dev.sparktrainer.nn.ModelSpec;
import dev.sparktrainer.nn.ModelZoo;
import dev.sparktrainer.optim.OptimizerConfig;
import dev.sparktrainer.train.EpochStats;
import dev.sparktrainer.train.Trainer;
import dev.sparktrainer.train.TrainerConfig;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * The GPU benchmark suite, our side (benchmarks/gpu/README in benchmarks/README.md): W ranks as threads of
 * this JVM through {@link LocalLauncher}, one GPU each, NCCL between them (W = 1: no communicator), the
 * library's own {@link Trainer} with its host data path (rows in Java arrays -> batches -> GPU).
 *
 * <pre>
 * java -cp ... dev.sparktrainer.bench.gpu.GpuBench --world 2 --benches mlp,fmnist,allreduce \
 *     --fmnist /tmp/st-data/fashion-mnist --out raw.jsonl [--steps 50] [--repeats 3] [--profile] \
 *     [--resnet-batch 256] [--resnet-steps 20] [--small-cnn-repeats 15]
 * </pre>
 *
 * Benchmarks: {@code mlp} (1024-8192x4-1000 ReLU, bf16 mixed precision, SGD momentum 0.9, per-GPU batch
 * 4096, synthetic rows), {@code fmnist} (Fashion-MNIST MLP 784-256-128-10 ReLU, bf16, AdamW 1e-3, per-GPU
 * batch 512), {@code small-cnn} (the Fashion-MNIST CNN of {@link ModelZoo#fashionMnistCnn()}, bf16, SGD
 * momentum 0.9, per-GPU batch 512, full epochs of Fashion-MNIST, or synthetic 1x28x28 rows when --fmnist is
 * not a folder; samples/s), {@code resnet50} ({@link ModelZoo#resnet50(int)}, 1000 classes, synthetic
 * 3x224x224 images, bf16, SGD momentum 0.9, per-GPU batch --resnet-batch (256), --resnet-steps (20) steps
 * per epoch; img/s), {@code allreduce} (NCCL all-reduce of fp32 buffers of 25 MiB, 256 MiB, 1 GiB, bus
 * bandwidth). Every training benchmark runs one warm-up epoch, then {@code repeats} measured epochs (small-cnn:
 * {@code --small-cnn-repeats}, default {@code repeats}: its epoch at W = 2 lasts ~34 ms, so one host hiccup in a
 * median of 3 can halve the figure, as torch_ref.py's --small-cnn-repeats says); the
 * figure is the median over measured epochs of (samples of all ranks) / (slowest rank's epoch seconds). Each
 * result is one JSON line appended to the output file. Peak memory: the largest peak of the ranks' device
 * arenas ({@code peak_mem_bytes}: what the engine allocated through its arena) and, as a second figure, total
 * minus free device memory after training ({@code device_used_bytes}: also the CUDA context, library handles
 * and any workspace allocated outside the arena). With {@code -Dsparktrainer.cuda.graphs=true} (through
 * BENCH_JAVA_OPTS) the trainers capture each step as a CUDA graph and replay it (Note [CUDA graphs] in
 * Trainer); the result then says {@code cuda_graphs}, the steps rank 0 ran from graphs, and why graphs went
 * off, if they did.
 */
public final class GpuBench {
  static final int MLP_BATCH = 4096;
  static final int MLP_IN = 1024;
  static final int MLP_CLASSES = 1000;
  static final int FMNIST_BATCH = 512;
  static final int SMALL_CNN_BATCH = 512;
  static final int RESNET_BATCH = 256;
  static final int RESNET_STEPS = 20;
  static final int RESNET_CLASSES = 1000;
  static final int RESNET_DIM = 3 * 224 * 224;

  private GpuBench() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> a = parse(args);
    int world = Integer.parseInt(a.getOrDefault("world", "1"));
    List<String> benches = Arrays.asList(a.getOrDefault("benches", "mlp,fmnist,allreduce").split(","));
    Path out = Path.of(a.getOrDefault("out", "gpu-bench.jsonl"));
    int steps = Integer.parseInt(a.getOrDefault("steps", "50"));
    int repeats = Integer.parseInt(a.getOrDefault("repeats", "3"));
    int cnnRepeats = Integer.parseInt(a.getOrDefault("small-cnn-repeats", String.valueOf(repeats)));
    String variant = a.getOrDefault("variant", "ours");
    int gpus = Cuda.deviceCount();
    if (world > gpus) {
      throw new IllegalArgumentException("--world " + world + " needs " + world + " GPUs, " + gpus + " visible");
    }
    String card = Cuda.deviceName(0);
    for (String b : benches) {
      long t0 = System.nanoTime();
      switch (b) {
        case "mlp" -> emit(out, mlp("mlp", DType.FLOAT32, world, steps, repeats, card, variant,
            a.containsKey("profile")));
        case "mlp-bf16g" -> emit(out, mlp(b, DType.BFLOAT16, world, steps, repeats, card, variant,
            a.containsKey("profile")));
        case "gemm-peak" -> System.out.println("[gpu-bench] gemm-peak: measured by torch_ref.py only");
        case "fmnist" -> emit(out, fmnist(world, Path.of(a.getOrDefault("fmnist",
            FashionMnist.DEFAULT_DIR.toString())), repeats, card, variant));
        case "small-cnn" -> emit(out, smallCnn(world, Path.of(a.getOrDefault("fmnist",
            FashionMnist.DEFAULT_DIR.toString())), steps, cnnRepeats, card, variant, a.containsKey("profile")));
        case "resnet50" -> emit(out, resnet50(world, Integer.parseInt(a.getOrDefault("resnet-batch",
            String.valueOf(RESNET_BATCH))), Integer.parseInt(a.getOrDefault("resnet-steps",
            String.valueOf(RESNET_STEPS))), repeats, card, variant, a.containsKey("profile")));
        case "allreduce" -> {
          if (world >= 2) {
            for (Map<String, Object> r : allReduce(world, card, variant)) {
              emit(out, r);
            }
          }
        }
        default -> throw new IllegalArgumentException("unknown benchmark " + b
            + " (mlp, mlp-bf16g, fmnist, small-cnn, resnet50, allreduce, gemm-peak)");
      }
      System.out.printf(Locale.ROOT, "[gpu-bench] %s W=%d done in %.1f s%n", b, world, (System.nanoTime() - t0) / 1e9);
    }
  }

  // ---------------------------------------------------------------- training benchmarks

  /** What one rank reports: epoch statistics, arena peak, total - free device memory after training. */
  record RankResult(List<EpochStats> stats, long peakBytes, long deviceUsedBytes, Map<String, Double> profile,
      long graphSteps, String graphsOff, Map<String, Double> timeline, long steadyBytes,
      Model.PlannedMemory memoryPlan) {}

  /**
   * mlp: the MLP at per-GPU batch 4096, bf16, SGD momentum 0.9. {@code grads}: the gradient dtype (mlp-bf16g:
   * BFLOAT16, Note [bf16 gradients] in nn.Model, compared with PyTorch DDP's bf16 compression hook at W > 1).
   */
  static Map<String, Object> mlp(String name, DType grads, int world, int steps, int repeats, String card,
      String variant, boolean profile) {
    // -Dsparktrainer.bench.mlpActivation=gelu: the same MLP with GELU (ours only, for Note [fused GELU] in nn.Linear)
    String act = System.getProperty("sparktrainer.bench.mlpActivation", "relu");
    ModelSpec spec = ModelSpec.mlp(MLP_IN, new int[] {8192, 8192, 8192, 8192}, MLP_CLASSES, act, 0f);
    TrainerConfig cfg = TrainerConfig.builder().epochs(1 + repeats).batchSize(MLP_BATCH).seed(1)
        .optimizer(OptimizerConfig.sgd(0.01).withMomentum(0.9)).build();
    // A pool of 4 batches of random rows per rank, cycled (the host path copies every batch anyway).
    int pool = 4 * MLP_BATCH;
    List<RankResult> rs = LocalLauncher.run(world, Cuda.deviceCount(), 1800, ctx -> {
      HeapRowStore store = synthetic(pool, MLP_IN, MLP_CLASSES, 1000 + ctx.rank());
      int[] local = new int[steps * MLP_BATCH];
      for (int i = 0; i < local.length; i++) {
        local[i] = i % pool;
      }
      return trainRank(ctx, spec, cfg, store, local, steps, profile, grads);
    });
    Map<String, Object> r = summarize(name, world, card, variant, cfg.batchSize(), rs, "samples/s");
    r.put("model", "MLP 1024-8192-8192-8192-8192-1000 " + (act.equals("relu") ? "ReLU" : act)
        + ", bf16 mixed precision, SGD momentum 0.9" + (act.equals("gelu") && Model.fuseGeluEnabled() ? ", fused GELU" : ""));
    r.put("gradients", grads == DType.BFLOAT16 ? "bf16 (Note [bf16 gradients])" : "fp32");
    return r;
  }

  static Map<String, Object> fmnist(int world, Path dir, int repeats, String card, String variant)
      throws IOException {
    HeapRowStore train = FashionMnist.train(dir);
    ModelSpec spec = ModelSpec.mlp(FashionMnist.PIXELS, new int[] {256, 128}, FashionMnist.CLASSES, "relu", 0f);
    TrainerConfig cfg = TrainerConfig.builder().epochs(1 + repeats).batchSize(FMNIST_BATCH).seed(7)
        .optimizer(OptimizerConfig.adamw(1e-3)).build();
    SamplerPlan plan = new SamplerPlan(train.rows(), world, FMNIST_BATCH, 7, false);
    List<RankResult> rs = LocalLauncher.run(world, Cuda.deviceCount(), 1800, ctx ->
        trainRank(ctx, spec, cfg, train, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch(), false));
    Map<String, Object> r = summarize("fmnist", world, card, variant, cfg.batchSize(), rs, "samples/s");
    r.put("model", "Fashion-MNIST MLP 784-256-128-10 ReLU, bf16 mixed precision, AdamW 1e-3");
    return r;
  }

  /**
   * small-cnn: the Fashion-MNIST CNN (conv3x3(32, pad 1)-relu-maxpool2-conv3x3(64, pad 1)-relu-maxpool2-fc128-
   * relu-fc10), bf16, SGD momentum 0.9 (lr 0.01), per-GPU batch 512: full epochs of Fashion-MNIST through the
   * sampler as fmnist does (118 / 59 / 30 steps at W = 1 / 2 / 4), or, when {@code dir} is not a folder,
   * {@code steps} steps per epoch over a pool of 4 synthetic batches of 1x28x28 rows per rank.
   */
  static Map<String, Object> smallCnn(int world, Path dir, int steps, int repeats, String card, String variant,
      boolean profile) throws IOException {
    ModelSpec spec = ModelZoo.fashionMnistCnn();
    TrainerConfig cfg = TrainerConfig.builder().epochs(1 + repeats).batchSize(SMALL_CNN_BATCH).seed(7)
        .optimizer(OptimizerConfig.sgd(0.01).withMomentum(0.9)).build();
    boolean real = Files.isDirectory(dir);
    List<RankResult> rs;
    if (real) {
      HeapRowStore train = FashionMnist.train(dir);
      SamplerPlan plan = new SamplerPlan(train.rows(), world, SMALL_CNN_BATCH, 7, false);
      rs = LocalLauncher.run(world, Cuda.deviceCount(), 1800, ctx ->
          trainRank(ctx, spec, cfg, train, plan.rowsOfRank(ctx.rank()), (int) plan.stepsPerEpoch(), profile));
    } else {
      int pool = 4 * SMALL_CNN_BATCH;
      rs = LocalLauncher.run(world, Cuda.deviceCount(), 1800, ctx -> {
        HeapRowStore store = synthetic(pool, FashionMnist.PIXELS, FashionMnist.CLASSES, 2000 + ctx.rank());
        return trainRank(ctx, spec, cfg, store, cycle(steps * SMALL_CNN_BATCH, pool), steps, profile);
      });
    }
    Map<String, Object> r = summarize("small-cnn", world, card, variant, cfg.batchSize(), rs, "samples/s");
    r.put("model", "Fashion-MNIST CNN (ModelZoo.fashionMnistCnn, 421,642 parameters), bf16 mixed precision,"
        + " SGD momentum 0.9");
    r.put("data", real ? "Fashion-MNIST" : "synthetic 1x28x28");
    return r;
  }

  /**
   * resnet50: torchvision's ResNet-50 layout (ModelZoo.resnet50, 1000 classes, 25,557,032 parameters) on
   * synthetic 3x224x224 images, bf16, SGD momentum 0.9 (lr 0.01), per-GPU batch {@code batch}, {@code steps}
   * steps per epoch over a pool of 2 synthetic batches per rank (the host path copies every batch anyway).
   */
  static Map<String, Object> resnet50(int world, int batch, int steps, int repeats, String card, String variant,
      boolean profile) {
    ModelSpec spec = ModelZoo.resnet50(RESNET_CLASSES);
    TrainerConfig cfg = TrainerConfig.builder().epochs(1 + repeats).batchSize(batch).seed(1)
        .optimizer(OptimizerConfig.sgd(0.01).withMomentum(0.9)).build();
    int pool = 2 * batch;
    List<RankResult> rs = LocalLauncher.run(world, Cuda.deviceCount(), 1800, ctx -> {
      HeapRowStore store = synthetic(pool, RESNET_DIM, RESNET_CLASSES, 3000 + ctx.rank());
      return trainRank(ctx, spec, cfg, store, cycle(steps * batch, pool), steps, profile);
    });
    Map<String, Object> r = summarize("resnet50", world, card, variant, batch, rs, "img/s");
    r.put("model", "ResNet-50 (ModelZoo.resnet50, torchvision layout, 1000 classes), 3x224x224 synthetic,"
        + " bf16 mixed precision, SGD momentum 0.9");
    r.put("data", "synthetic 3x224x224");
    return r;
  }

  /** Indices 0, 1, ..., pool - 1, 0, 1, ... (n of them). */
  static int[] cycle(int n, int pool) {
    int[] local = new int[n];
    for (int i = 0; i < n; i++) {
      local[i] = i % pool;
    }
    return local;
  }

  static RankResult trainRank(WorkerContext ctx, ModelSpec spec, TrainerConfig cfg, HeapRowStore store,
      int[] local, int steps, boolean profile) {
    return trainRank(ctx, spec, cfg, store, local, steps, profile, DType.FLOAT32);
  }

  static RankResult trainRank(WorkerContext ctx, ModelSpec spec, TrainerConfig cfg, HeapRowStore store,
      int[] local, int steps, boolean profile, DType grads) {
    // Diagnostics: -Dsparktrainer.bench.noComm=true: W ranks in one JVM that train apart, no NCCL;
    // -Dsparktrainer.bench.commIdle=true: as noComm, but an NCCL communicator exists beside (created, its
    // connections made by one all-reduce of the gradient buffer's size, then left idle during training).
    boolean apart = Boolean.getBoolean("sparktrainer.bench.noComm") || Boolean.getBoolean("sparktrainer.bench.commIdle");
    boolean idleComm = ctx.worldSize() > 1 && Boolean.getBoolean("sparktrainer.bench.commIdle");
    try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
        Communicator idle = idleComm ? NcclCommunicator.create(ctx, d, Duration.ofMinutes(5)) : null;
        Communicator c = ctx.worldSize() == 1 || apart
            ? new LocalCommunicator() : NcclCommunicator.create(ctx, d, Duration.ofMinutes(5))) {
      Model m = new Model(spec, d, DType.BFLOAT16, grads);
      if (idle != null) {
        idle.allReduceSum(m.parameters().grads());
        d.synchronize();
      }
      // Note: the non-finite check (a reduction + host wait per step) is off, as in the PyTorch reference.
      Trainer t = new Trainer(m, cfg, c).checkNonFinite(false)
          .bf16GradientAllReduce(Boolean.getBoolean("sparktrainer.bench.bf16Grads")) // DDP's bf16 compression hook
          .cudaGraphs(cudaGraphs()) // Note [CUDA graphs]: BENCH_JAVA_OPTS=-Dsparktrainer.cuda.graphs=true
          .stepTimeline(true); // Note [step timeline]: device time per phase, reported per rank
      String buckets = System.getProperty("sparktrainer.bench.bucketsMiB"); // a diagnostic: "first,rest" MiB
      if (buckets != null) {
        String[] mib = buckets.split(",");
        t.gradientBuckets(Long.parseLong(mib[0].trim()) << 20, Long.parseLong(mib[1].trim()) << 20);
      }
      t.initializeWeights();
      List<EpochStats> st = t.fit(store, local, steps);
      long peak = d.peakAllocatedBytes(); // registrable buffers too; before the profile (a second optimizer)
      long steady = d.allocatedBytes(); // after the first step nothing more is allocated (Note [step memory plan])
      List<Model.PlannedMemory> plans = m.memoryPlans();
      long[] mem = d.memoryInfo();
      Map<String, Double> prof = profile ? profileSteps(d, m, store, local, cfg) : Map.of();
      return new RankResult(st, peak, mem[1] - mem[0], prof, t.graphSteps(), t.graphsOffReason(),
          medianTimeline(t.timelines()), steady, plans.isEmpty() ? null : plans.get(plans.size() - 1));
    }
  }

  /**
   * A coarse timing breakdown of one rank's step, each phase followed by a device synchronize (so phases
   * do not overlap; the sum is more than a real step): milliseconds per phase, median of 10 steps.
   */
  static Map<String, Double> profileSteps(CudaDevice d, Model m, HeapRowStore store, int[] local,
      TrainerConfig cfg) {
    int b = cfg.batchSize();
    float[] xs = new float[b * store.dim()];
    int[] ys = new int[b];
    store.gather(local, 0, b, xs, ys, null);
    Tensor x = d.allocate(DType.FLOAT32, b, store.dim());
    Tensor y = d.allocate(DType.INT32, b);
    Tensor losses = d.allocate(DType.FLOAT32, b);
    Tensor dOut = d.allocate(DType.FLOAT32, b, m.spec().outputSize());
    var opt = cfg.optimizer().create(d, m.parameters());
    String[] names = {"upload", "zero_grad", "forward", "loss", "backward", "optimizer", "sum_squares"};
    double[][] ms = new double[names.length][10];
    for (int s = 0; s < 12; s++) {
      long[] t = new long[names.length + 1];
      d.synchronize();
      t[0] = System.nanoTime();
      d.upload(xs, 0, x);
      d.upload(ys, 0, y);
      d.synchronize();
      t[1] = System.nanoTime();
      m.zeroGrad();
      d.synchronize();
      t[2] = System.nanoTime();
      Layer.Context ctx = new Layer.Context(true, 1, s);
      Tensor out = m.forward(x, ctx);
      d.synchronize();
      t[3] = System.nanoTime();
      Loss.CROSS_ENTROPY.compute(d, out, y, losses, dOut, 1f / b);
      d.synchronize();
      t[4] = System.nanoTime();
      m.backward(dOut, ctx);
      d.synchronize();
      t[5] = System.nanoTime();
      opt.step(0.0);
      d.synchronize();
      t[6] = System.nanoTime();
      d.sumSquares(m.parameters().grads());
      t[7] = System.nanoTime();
      if (s >= 2) {
        for (int k = 0; k < names.length; k++) {
          ms[k][s - 2] = (t[k + 1] - t[k]) / 1e6;
        }
      }
    }
    Map<String, Double> r = new LinkedHashMap<>();
    for (int k = 0; k < names.length; k++) {
      r.put(names[k], median(ms[k]));
    }
    // Per op (CudaDevice's op profile, Note [op profile]): milliseconds per step over 5 steps, ops serialized.
    int opSteps = 5;
    d.setOpProfiling(true);
    for (int s = 0; s < opSteps; s++) {
      m.zeroGrad();
      Layer.Context ctx = new Layer.Context(true, 1, 100 + s);
      Tensor out = m.forward(x, ctx);
      Loss.CROSS_ENTROPY.compute(d, out, y, losses, dOut, 1f / b);
      m.backward(dOut, ctx);
      opt.step(0.0);
    }
    d.synchronize();
    d.setOpProfiling(false);
    d.opProfile().forEach((op, v) -> r.put("op:" + op + " (" + (int) (v[1] / opSteps) + " calls)", v[0] / opSteps));
    return r;
  }

  static HeapRowStore synthetic(int rows, int dim, int classes, long seed) {
    SplittableRandom rnd = new SplittableRandom(seed);
    float[] x = new float[rows * dim];
    for (int i = 0; i < x.length; i++) {
      x[i] = (float) (rnd.nextDouble() * 2 - 1);
    }
    int[] y = new int[rows];
    for (int i = 0; i < rows; i++) {
      y[i] = rnd.nextInt(classes);
    }
    return new HeapRowStore(x, y, dim);
  }

  static Map<String, Object> summarize(String bench, int world, String card, String variant, int batch,
      List<RankResult> rs, String unit) {
    int epochs = rs.get(0).stats().size();
    double[] tput = new double[epochs - 1];
    double waitShare = 0;
    double commShare = 0;
    double loss = Double.NaN;
    for (int e = 1; e < epochs; e++) {
      long samples = 0;
      double slowest = 0;
      for (RankResult r : rs) {
        EpochStats s = r.stats().get(e);
        samples += s.samples();
        slowest = Math.max(slowest, s.seconds());
        waitShare = Math.max(waitShare, s.dataWaitSeconds() / s.seconds());
        commShare = Math.max(commShare, s.commSeconds() / s.seconds());
        loss = s.loss();
      }
      tput[e - 1] = samples / slowest;
    }
    long peak = 0;
    long used = 0;
    for (RankResult r : rs) {
      peak = Math.max(peak, r.peakBytes());
      used = Math.max(used, r.deviceUsedBytes());
    }
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("benchmark", bench);
    m.put("engine", variant);
    m.put("world", world);
    m.put("value", median(tput));
    m.put("unit", unit);
    m.put("card", card);
    m.put("per_gpu_batch", batch);
    m.put("repeats", tput);
    m.put("peak_mem_bytes", peak);
    long steady = 0;
    for (RankResult r : rs) {
      steady = Math.max(steady, r.steadyBytes());
    }
    m.put("steady_mem_bytes", steady); // held from the second step on, nothing allocated after the first
    Model.PlannedMemory plan = rs.get(0).memoryPlan();
    if (plan != null) {
      Map<String, Object> pm = new LinkedHashMap<>();
      pm.put("input", plan.input());
      pm.put("slab_bytes", plan.totalSlabBytes());
      pm.put("max_live_bytes", plan.maxLiveBytes());
      pm.put("replaced_bytes", plan.replacedBytes());
      m.put("memory_plan_rank0", pm);
    }
    m.put("device_used_bytes", used);
    m.put("data_wait_share_max_rank", waitShare);
    m.put("comm_wait_share_max_rank", commShare);
    m.put("last_epoch_loss", loss);
    m.put("epoch0_seconds", rs.get(0).stats().get(0).seconds());
    if (!rs.get(0).profile().isEmpty()) {
      m.put("profile_ms_rank0", rs.get(0).profile());
    }
    Map<String, Map<String, Double>> timelines = new LinkedHashMap<>();
    for (int k = 0; k < rs.size(); k++) {
      timelines.put("rank" + k, rs.get(k).timeline());
    }
    m.put("timeline_ms_per_step", timelines);
    m.put("cuda_graphs", cudaGraphs());
    if (cudaGraphs()) {
      m.put("graph_steps_rank0", rs.get(0).graphSteps()); // of all epochs, warm-up included
      if (rs.get(0).graphsOff() != null) {
        m.put("cuda_graphs_off", rs.get(0).graphsOff());
      }
    }
    return m;
  }

  /**
   * Per phase, the median over the measured epochs (all but the first, the warm-up) of the device milliseconds
   * per step (Note [step timeline]).
   */
  static Map<String, Double> medianTimeline(List<Map<String, Double>> epochs) {
    Map<String, Double> out = new LinkedHashMap<>();
    if (epochs.size() < 2) {
      return out;
    }
    for (String phase : epochs.get(epochs.size() - 1).keySet()) {
      double[] v = new double[epochs.size() - 1];
      for (int e = 1; e < epochs.size(); e++) {
        v[e - 1] = epochs.get(e).getOrDefault(phase, 0.0);
      }
      out.put(phase, Math.round(median(v) * 1e4) / 1e4);
    }
    return out;
  }

  /** -Dsparktrainer.cuda.graphs=true: the trainers capture and replay their steps (Note [CUDA graphs]). */
  static boolean cudaGraphs() {
    return Boolean.getBoolean(Trainer.CUDA_GRAPHS_PROPERTY);
  }

  // ---------------------------------------------------------------- all-reduce

  /**
   * The all-reduce benchmark takes the path that the trainer takes for a gradient of each size
   * (Trainer.overlapsAllReduce under this mode): -Dsparktrainer.train.allReduceMode (auto, overlapped, in_order),
   * as the trainer reads it; AUTO: in order on the compute stream for <= 256 MiB on one host, else on the comm
   * stream. The path is in each result ("path").
   */
  static final Trainer.AllReduceMode ALLREDUCE_MODE =
      Trainer.AllReduceMode.parse(System.getProperty("sparktrainer.train.allReduceMode", "auto"));

  static List<Map<String, Object>> allReduce(int world, String card, String variant) {
    long[] sizes = {25L << 20, 256L << 20, 1L << 30};
    int warmup = 5;
    int iters = 50; // as torch_ref.py's ALLREDUCE_ITERS
    List<double[]> perRank = LocalLauncher.run(world, Cuda.deviceCount(), 600, ctx -> {
      try (CudaDevice d = new CudaDevice(GpuSelector.select(ctx));
          NcclCommunicator c = NcclCommunicator.create(ctx, d, Duration.ofMinutes(2))) {
        double[] secs = new double[2 * sizes.length];
        for (int s = 0; s < sizes.length; s++) {
          int n = (int) (sizes[s] / 4);
          Tensor buf = d.allocate(DType.FLOAT32, n);
          d.fill(buf, 1f / 1024);
          // Decided before the clock starts: the first call loads and initialises Trainer (24 ms in a fresh JVM on
          // the development machine: it had put the 25 MiB figure at 81-93 GB/s when the all-reduce ran alone).
          boolean overlapped = Trainer.overlapsAllReduce(ALLREDUCE_MODE, sizes[s], c.allRanksOnOneHost());
          // The warm-up takes the timed calls' path, as torch_ref.py's does (the same dist.all_reduce).
          for (int i = 0; i < warmup; i++) {
            startAllReduce(c, buf, overlapped);
          }
          c.awaitAsync();
          d.synchronize();
          c.broadcast(buf.view(0, 1), 0); // line the ranks up
          d.synchronize();
          // Queued back to back (the trainer's async path), then one wait under the watchdog, as
          // torch.distributed is timed: dist.all_reduce x iters, then synchronize.
          long t0 = System.nanoTime();
          for (int i = 0; i < iters; i++) {
            startAllReduce(c, buf, overlapped);
          }
          long queued = System.nanoTime();
          c.awaitAsync();
          d.synchronize();
          secs[s] = (System.nanoTime() - t0) / 1e9 / iters;
          // host time to hand one all-reduce to NCCL (Note [blocking collectives] in NcclCommunicator)
          secs[sizes.length + s] = (queued - t0) / 1e9 / iters;
        }
        return secs;
      }
    });
    List<Map<String, Object>> out = new ArrayList<>();
    for (int s = 0; s < sizes.length; s++) {
      double t = 0;
      double host = 0;
      for (double[] r : perRank) {
        t = Math.max(t, r[s]);
        host = Math.max(host, r[sizes.length + s]);
      }
      double bus = sizes[s] * 2.0 * (world - 1) / world / t / 1e9;
      Map<String, Object> m = new LinkedHashMap<>();
      m.put("benchmark", "allreduce");
      m.put("engine", variant);
      m.put("world", world);
      m.put("size_bytes", sizes[s]);
      m.put("value", bus);
      m.put("unit", "GB/s bus bandwidth");
      m.put("card", card);
      m.put("seconds_per_op", t);
      m.put("host_us_per_call", Math.round(host * 1e7) / 10.0);
      // LocalLauncher's ranks share this host
      m.put("path", Trainer.overlapsAllReduce(ALLREDUCE_MODE, sizes[s], true) ? "comm stream (overlapped)"
          : "compute stream (in order)");
      out.add(m);
    }
    return out;
  }

  /** One all-reduce of the benchmark, on the comm stream (overlapped) or the compute stream (in order). */
  static void startAllReduce(NcclCommunicator c, Tensor buf, boolean overlapped) {
    if (overlapped) {
      c.allReduceSumAsync(buf);
    } else {
      c.allReduceSumInOrder(buf);
    }
  }

  // ---------------------------------------------------------------- helpers

  static double median(double[] v) {
    double[] s = v.clone();
    Arrays.sort(s);
    int n = s.length;
    return n == 0 ? Double.NaN : n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }

  static Map<String, String> parse(String[] args) {
    Map<String, String> m = new LinkedHashMap<>();
    for (int i = 0; i < args.length; i++) {
      if (!args[i].startsWith("--")) {
        throw new IllegalArgumentException("unexpected argument " + args[i]);
      }
      String k = args[i].substring(2);
      if (i + 1 < args.length && !args[i + 1].startsWith("--")) {
        m.put(k, args[++i]);
      } else {
        m.put(k, "true");
      }
    }
    return m;
  }

  static void emit(Path out, Map<String, Object> r) {
    String line = json(r);
    System.out.println("[gpu-bench] " + line);
    try {
      Files.writeString(out, line + "\n", StandardCharsets.UTF_8, StandardOpenOption.CREATE,
          StandardOpenOption.APPEND);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static String json(Object o) {
    if (o instanceof Map<?, ?> m) {
      StringBuilder sb = new StringBuilder("{");
      for (Map.Entry<?, ?> e : m.entrySet()) {
        if (sb.length() > 1) {
          sb.append(", ");
        }
        sb.append('"').append(e.getKey()).append("\": ").append(json(e.getValue()));
      }
      return sb.append('}').toString();
    }
    if (o instanceof double[] d) {
      StringBuilder sb = new StringBuilder("[");
      for (int i = 0; i < d.length; i++) {
        sb.append(i > 0 ? ", " : "").append(json(d[i]));
      }
      return sb.append(']').toString();
    }
    if (o instanceof Double d) {
      return d.isNaN() || d.isInfinite() ? "null" : String.format(Locale.ROOT, "%.6g", d);
    }
    if (o instanceof Number || o instanceof Boolean) {
      return o.toString();
    }
    return '"' + String.valueOf(o).replace("\\", "\\\\").replace("\"", "\\\"") + '"';
  }
}
