#!/usr/bin/env python3
"""PyTorch reference for the GPU benchmark suite (benchmarks/README.md, "GPU: ours vs PyTorch").

Same models, batches and optimizers as dev.sparktrainer.bench.gpu.GpuBench, PyTorch eager with bf16
autocast; W > 1 runs DistributedDataParallel over NCCL, one process per GPU (torch.multiprocessing.spawn).
The training data lives on the GPU (synthetic batches for mlp and resnet50, the whole Fashion-MNIST set for
fmnist and small-cnn): PyTorch moves no data per step, its best case; ours copies every batch from host memory.
The CNNs (small-cnn, resnet50) run channels_last with cudnn.benchmark on (PyTorch's usual fast settings), and
DDP with broadcast_buffers=False: each rank keeps its own batch-norm statistics, as ours does (the default
would also broadcast rank 0's buffers before every forward).

  python3 torch_ref.py --world 2 --benches mlp,fmnist,allreduce --fmnist DIR --out raw.jsonl
  python3 torch_ref.py --world 1 --benches small-cnn,resnet50 --resnet-batch 256 --resnet-steps 20
Each result is one JSON line appended to --out (written by rank 0).
"""
import argparse
import gzip
import json
import os
import statistics
import struct
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

MLP_BATCH, MLP_IN, MLP_CLASSES = 4096, 1024, 1000
FMNIST_BATCH = 512
SMALL_CNN_BATCH = 512
RESNET_CLASSES = 1000
MEAN, STD = 0.2860, 0.3530


def mlp_model():
    dims = [MLP_IN, 8192, 8192, 8192, 8192]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], MLP_CLASSES))
    return nn.Sequential(*layers)


def fmnist_model():
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def small_cnn_model():
    """ModelZoo.fashionMnistCnn(): conv3x3(32, pad 1)-relu-maxpool2-conv3x3(64, pad 1)-relu-maxpool2-flatten-
    fc128-relu-fc10 (bias everywhere, PyTorch's default init, as ours), 421,642 parameters."""
    m = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    n = sum(p.numel() for p in m.parameters())
    assert n == 421642, "small-cnn has %d parameters, ModelZoo.fashionMnistCnn has 421,642" % n
    return m


def resnet50_model():
    """torchvision.models.resnet50 (v1.5: stride on the 3x3 conv), which ModelZoo.resnet50 mirrors layer by layer
    (stem conv7x7/2 no bias - bn - relu - maxpool3x3/2 pad 1, bottlenecks [3, 4, 6, 3] with 1x1/3x3/1x1 convs
    without bias, a 1x1 conv + bn shortcut where shape changes, global average pool, fc), 25,557,032 parameters
    for 1000 classes; batch norm eps 1e-5, momentum 0.1 on both sides."""
    import torchvision
    m = torchvision.models.resnet50(num_classes=RESNET_CLASSES)
    n = sum(p.numel() for p in m.parameters())
    assert n == 25557032, "resnet50 has %d parameters, ModelZoo.resnet50(1000) has 25,557,032" % n
    return m


def read_idx(path):
    for p in (path + ".gz", path):
        if os.path.exists(p):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                data = f.read()
            magic, n = struct.unpack(">II", data[:8])
            if magic == 0x803:
                return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 784)
            return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8)
    raise FileNotFoundError(path)


def fashion_mnist(d, device, images):
    """The normalized training set on the GPU: (60000, 784) or, with images, (60000, 1, 28, 28); None when the
    files are missing (small-cnn then uses synthetic rows, as GpuBench does when --fmnist is not a folder)."""
    try:
        x = read_idx(os.path.join(d, "train-images-idx3-ubyte"))
        y = read_idx(os.path.join(d, "train-labels-idx1-ubyte"))
    except FileNotFoundError:
        return None
    x = x.to(device).float().div_(255).sub_(MEAN).div_(STD)
    if images:
        x = x.reshape(-1, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    return x, y.to(device).long()


def epoch_indices(n, world, rank, batch, device):
    """The rows of one rank for full epochs (as the fmnist bench): a seeded permutation cut into W equal parts,
    wrapped at the end; returns (steps per epoch, indices)."""
    per_rank = (n + world - 1) // world
    steps = (per_rank + batch - 1) // batch
    g = torch.Generator(device=device)
    g.manual_seed(7)
    perm = torch.randperm(n, device=device, generator=g)
    return steps, perm.repeat(2)[rank * steps * batch:(rank + 1) * steps * batch]


def timed_epochs(model, opt, batch_of, steps, repeats, world):
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        x, y = batch_of(i)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for i in range(steps):  # warm-up epoch
        step(i)
    torch.cuda.synchronize()
    secs = []
    for _ in range(repeats):
        if world > 1:
            dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            loss = step(i)
        torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    return secs, float(loss.detach())


def gather_max(v, world, device):
    if world == 1:
        return v
    t = torch.tensor([v], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def bench_train(name, rank, world, device, args):
    torch.manual_seed(1 + rank)
    torch.cuda.reset_peak_memory_stats(device)
    cnn, unit, data_desc = False, "samples/s", None
    if name in ("mlp", "mlp-bf16g"):
        model = mlp_model().to(device)
        opt_ctor = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)
        pool = [(torch.rand(MLP_BATCH, MLP_IN, device=device) * 2 - 1,
                 torch.randint(0, MLP_CLASSES, (MLP_BATCH,), device=device)) for _ in range(4)]
        batch_of = lambda i: pool[i % len(pool)]
        steps, batch = args.steps, MLP_BATCH
        desc = "MLP 1024-8192-8192-8192-8192-1000 ReLU, bf16 autocast, SGD momentum 0.9"
        if name == "mlp-bf16g":
            desc += ", DDP bf16_compress_hook at W > 1"
    elif name == "fmnist":
        data = fashion_mnist(args.fmnist, device, images=False)
        if data is None:
            raise FileNotFoundError("Fashion-MNIST not found in " + args.fmnist)
        x, y = data
        model = fmnist_model().to(device)
        opt_ctor = lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)
        batch = FMNIST_BATCH
        steps, idx = epoch_indices(x.shape[0], world, rank, batch, device)

        def batch_of(i):
            j = idx[i * batch:(i + 1) * batch]
            return x[j], y[j]
        desc = "Fashion-MNIST MLP 784-256-128-10 ReLU, bf16 autocast, AdamW 1e-3"
    elif name == "small-cnn":
        cnn = True
        data = fashion_mnist(args.fmnist, device, images=True)
        model = small_cnn_model().to(device).to(memory_format=torch.channels_last)
        opt_ctor = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)
        batch = SMALL_CNN_BATCH
        if data is not None:
            x, y = data
            steps, idx = epoch_indices(x.shape[0], world, rank, batch, device)

            def batch_of(i):
                j = idx[i * batch:(i + 1) * batch]
                return x[j], y[j]
        else:
            steps = args.steps
            pool = [(torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last),
                     torch.randint(0, 10, (batch,), device=device)) for _ in range(4)]
            batch_of = lambda i: pool[i % len(pool)]
        desc = ("Fashion-MNIST CNN (= ModelZoo.fashionMnistCnn, 421,642 parameters), bf16 autocast, channels_last,"
                " SGD momentum 0.9")
        data_desc = "Fashion-MNIST" if data is not None else "synthetic 1x28x28"
    elif name == "resnet50":
        cnn = True
        model = resnet50_model().to(device).to(memory_format=torch.channels_last)
        opt_ctor = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)
        batch, steps = args.resnet_batch, args.resnet_steps
        pool = [(torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last),
                 torch.randint(0, RESNET_CLASSES, (batch,), device=device)) for _ in range(2)]
        batch_of = lambda i: pool[i % len(pool)]
        desc = "torchvision ResNet-50 (1000 classes), 3x224x224 synthetic, bf16 autocast, channels_last, SGD momentum 0.9"
        data_desc = "synthetic 3x224x224"
        unit = "img/s"
    else:
        raise ValueError("unknown benchmark " + name)
    torch.backends.cudnn.benchmark = cnn
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=not cnn)
        if name == "mlp-bf16g":  # the gradients all-reduced in bf16, as ours with bf16 gradients
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    opt = opt_ctor(model.parameters())
    repeats = args.small_cnn_repeats if name == "small-cnn" and args.small_cnn_repeats else args.repeats
    secs, loss = timed_epochs(model, opt, batch_of, steps, repeats, world)
    secs = [gather_max(s, world, device) for s in secs]
    peak = gather_max(float(torch.cuda.max_memory_allocated(device)), world, device)
    reserved = gather_max(float(torch.cuda.max_memory_reserved(device)), world, device)
    tput = [world * steps * batch / s for s in secs]
    r = {"benchmark": name, "engine": "pytorch", "world": world, "value": statistics.median(tput),
         "unit": unit, "card": torch.cuda.get_device_name(device), "per_gpu_batch": batch,
         "repeats": tput, "peak_mem_bytes": int(peak), "peak_reserved_bytes": int(reserved),
         "last_epoch_loss": loss, "model": desc, "torch": torch.__version__, "ddp": world > 1}
    if data_desc:
        r["data"] = data_desc
    return r


def bench_gemm_peak(device):
    """The card's bf16 matmul peak, measured in the same call: an 8192^3 bf16 product of random normal matrices
    (as KINDS.md's 787 TFLOP/s), 10 warm-up and 50 timed products, CUDA events; the median of 5 such rounds."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(10):
        c = a @ b
    rounds = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            c = a @ b
        end.record()
        torch.cuda.synchronize()
        rounds.append(2.0 * n ** 3 * 50 / (start.elapsed_time(end) / 1e3) / 1e12)
    del a, b, c
    return {"benchmark": "gemm-peak", "engine": "pytorch", "world": 1, "value": statistics.median(rounds),
            "unit": "TFLOP/s", "card": torch.cuda.get_device_name(device), "repeats": rounds,
            "model": "8192^3 bf16 matmul, random normal data", "torch": torch.__version__}


# Timed all-reduces per size, as GpuBench's (50: 20 left the 25 MiB figure to one straggling call).
ALLREDUCE_ITERS = 50


def bench_allreduce(rank, world, device):
    out = []
    for size in (25 << 20, 256 << 20, 1 << 30):
        buf = torch.full((size // 4,), 1.0 / 1024, dtype=torch.float32, device=device)
        for _ in range(5):
            dist.all_reduce(buf)
        torch.cuda.synchronize()
        dist.barrier()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(ALLREDUCE_ITERS):
            dist.all_reduce(buf)
        torch.cuda.synchronize()
        t = gather_max((time.perf_counter() - t0) / ALLREDUCE_ITERS, world, device)
        out.append({"benchmark": "allreduce", "engine": "pytorch", "world": world, "size_bytes": size,
                    "value": size * 2.0 * (world - 1) / world / t / 1e9, "unit": "GB/s bus bandwidth",
                    "card": torch.cuda.get_device_name(device), "seconds_per_op": t})
        del buf
    return out


def worker(rank, world, args):
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % args.port, rank=rank,
                                world_size=world, device_id=device)
    results = []
    for b in args.benches.split(","):
        t0 = time.time()
        if b in ("mlp", "mlp-bf16g", "fmnist", "small-cnn", "resnet50"):
            results.append(bench_train(b, rank, world, device, args))
        elif b == "gemm-peak":
            if world == 1:
                results.append(bench_gemm_peak(device))
        elif b == "allreduce":
            if world > 1:
                results += bench_allreduce(rank, world, device)
        else:
            raise ValueError("unknown benchmark " + b)
        if rank == 0:
            print("[torch-ref] %s W=%d done in %.1f s" % (b, world, time.time() - t0), flush=True)
        torch.cuda.empty_cache()
    if rank == 0:
        with open(args.out, "a") as f:
            for r in results:
                line = json.dumps(r)
                print("[torch-ref] " + line, flush=True)
                f.write(line + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--benches", default="mlp,fmnist,allreduce")
    p.add_argument("--fmnist", default="/tmp/st-data/fashion-mnist")
    p.add_argument("--out", default="raw.jsonl")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small-cnn-repeats", type=int, default=0,
                   help="measured epochs of small-cnn (0: --repeats); its epoch at W=2 lasts ~34 ms (ours) to ~0.2 s,"
                        " so one host hiccup in a median of 3 can halve the figure")
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--resnet-batch", type=int, default=256, help="per-GPU batch of resnet50")
    p.add_argument("--resnet-steps", type=int, default=20, help="steps per epoch of resnet50")
    args = p.parse_args()
    if args.world == 1:
        worker(0, 1, args)
    else:
        mp.spawn(worker, args=(args.world, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
