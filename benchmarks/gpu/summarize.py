#!/usr/bin/env python3
"""Pairs ours and PyTorch's figures from raw.jsonl (GpuBench + torch_ref.py) into the results format of
benchmarks/README.md: a JSON list, a Markdown table and PNG charts (when matplotlib is there).

  python3 summarize.py RAW.jsonl --outdir DIR --commit SHA --date 2026-11-26 [--label NAME]
"""
import argparse
import json
import os
from collections import OrderedDict


def key(r):
    return (r["benchmark"], r["world"], r.get("size_bytes", 0))


# Display order of the benchmarks; unknown names follow in the order they appear.
ORDER = ("mlp", "mlp-bf16g", "fmnist", "small-cnn", "resnet50", "allreduce", "gemm-peak")
TRAINING = ("mlp", "mlp-bf16g", "fmnist", "small-cnn", "resnet50")


# The benchmark MLP's matmul work per sample: forward and dW 2 x (1024*8192 + 3*8192^2 + 8192*1000) each, dx the same
# less the first layer's (not computed): 1.291 GFLOP.
MLP_FLOP_PER_SAMPLE = 2 * (3 * (1024 * 8192 + 3 * 8192 ** 2 + 8192 * 1000) - 1024 * 8192)
# An 8192^3 bf16 matmul through PyTorch on an H100 80GB HBM3 of this machine kind (KINDS.md, 2026-11-13).
KINDS_PEAK_TFLOPS = 787.0


def value_format(unit):
    """Number format of a table cell: samples/s as a plain integer (as before), other units named."""
    if unit.startswith("GB/s"):
        return "%.1f GB/s"
    if unit == "samples/s":
        return "%.0f"
    return "%.0f " + unit


def present(entries):
    seen = []
    for e in entries:
        if e["benchmark"] not in seen:
            seen.append(e["benchmark"])
    return [b for b in ORDER if b in seen] + [b for b in seen if b not in ORDER]


def mib(b):
    return "%.0f MiB" % (b / 2**20) if b < 2**30 else "%.0f GiB" % (b / 2**30)


def gpu_input_wait_share(timeline):
    """The most, over ranks, of the step's device time spent before the step's input is there: the timeline's
    "input wait" phase (CUDA graphs) or "input wait + zero grad" (eager), over the step's sum; None without one.
    The host's wait for the loader (the column before) is not the GPU's: with graphs the host runs far ahead."""
    if not timeline:
        return None
    shares = []
    for r in timeline.values():
        total = sum(r.values())
        wait = r.get("input wait", r.get("input wait + zero grad"))
        if wait is not None and total > 0:
            shares.append(wait / total)
    return max(shares) if shares else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("--outdir", required=True)
    p.add_argument("--commit", default="unknown")
    p.add_argument("--date", default="")
    p.add_argument("--label", default="suite")
    p.add_argument("--no-charts", action="store_true")
    a = p.parse_args()
    rows = [json.loads(l) for l in open(a.raw) if l.strip()]
    by = OrderedDict()
    for r in rows:
        by.setdefault(key(r), {})[r["engine"]] = r
    single = {}
    for (b, w, s), e in by.items():
        if w == 1:
            single[(b, s)] = e
    entries = []
    for (b, w, s), e in by.items():
        o, t = e.get("ours"), e.get("pytorch")
        ref = o or t
        ent = OrderedDict(benchmark=b, world=w)
        if s:
            ent["size_bytes"] = s
        ent["ours"] = o["value"] if o else None
        ent["pytorch"] = t["value"] if t else None
        ent["ratio"] = (o["value"] / t["value"]) if o and t and t["value"] else None
        ent["unit"] = ref["unit"]
        if "per_gpu_batch" in ref:
            ent["per_gpu_batch"] = ref["per_gpu_batch"]
            if o and t and o.get("per_gpu_batch") != t.get("per_gpu_batch"):
                ent["per_gpu_batch"] = {"ours": o.get("per_gpu_batch"), "pytorch": t.get("per_gpu_batch")}
        ent["card"] = ref["card"]
        ent["commit"] = a.commit
        ent["date"] = a.date
        for eng, r in (("ours", o), ("pytorch", t)):
            if r is None:
                continue
            if "peak_mem_bytes" in r:
                ent[eng + "_peak_mem_gib"] = r["peak_mem_bytes"] / 2**30
            if "repeats" in r:
                ent[eng + "_repeats"] = r["repeats"]
            one = single.get((b, s), {}).get(eng)
            if w > 1 and one and b != "allreduce":
                ent[eng + "_scaling"] = r["value"] / (w * one["value"])
        if o:
            for k in ("data_wait_share_max_rank", "comm_wait_share_max_rank", "profile_ms_rank0", "timeline_ms_per_step",
                      "steady_mem_bytes", "memory_plan_rank0",
                      "device_used_bytes", "data", "cuda_graphs", "graph_steps_rank0", "cuda_graphs_off"):
                if k in o:
                    ent["ours_" + k] = o[k]
        if t:
            for k in ("peak_reserved_bytes", "data"):
                if k in t:
                    ent["pytorch_" + k] = t[k]
        entries.append(ent)
    os.makedirs(a.outdir, exist_ok=True)
    base = os.path.join(a.outdir, a.label)
    with open(base + ".json", "w") as f:
        json.dump(entries, f, indent=1)

    card = entries[0]["card"] if entries else "?"
    lines = ["| benchmark | W | ours | PyTorch | ours / PyTorch | scaling ours | scaling PyTorch | peak GiB ours / PyTorch | data wait, host (ours, max rank) | input wait, GPU (ours, max rank) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rank = {b: i for i, b in enumerate(present(entries))}
    entries.sort(key=lambda e: (rank[e["benchmark"]], e["world"], e.get("size_bytes", 0)))
    for e in entries:
        def f(v, fmt):
            return fmt % v if v is not None else "-"
        name = e["benchmark"] + (" " + mib(e["size_bytes"]) if "size_bytes" in e else "")
        fmt = value_format(e["unit"])
        mem = "-"
        if "ours_peak_mem_gib" in e and "pytorch_peak_mem_gib" in e:
            mem = "%.2f / %.2f" % (e["ours_peak_mem_gib"], e["pytorch_peak_mem_gib"])
        dw = e.get("ours_data_wait_share_max_rank")
        iw = gpu_input_wait_share(e.get("ours_timeline_ms_per_step"))
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, e["world"], f(e["ours"], fmt), f(e["pytorch"], fmt), f(e["ratio"], "%.3fx"),
            f(e.get("ours_scaling"), "%.1f%%" if False else "%.3f"), f(e.get("pytorch_scaling"), "%.3f"),
            mem, f(dw * 100 if dw is not None else None, "%.2f%%"), f(iw * 100 if iw is not None else None, "%.2f%%")))
    md = ["# GPU suite %s (%s, commit %s, card: %s)" % (a.label, a.date, a.commit, card), ""] + lines + [""]
    for e in entries:
        if isinstance(e.get("per_gpu_batch"), dict):
            md.append("Note: %s W=%d ran with different per-GPU batches: ours %s, PyTorch %s (throughputs are per"
                      " sample, so the ratio still compares rates)." % (e["benchmark"], e["world"],
                                                                        e["per_gpu_batch"]["ours"],
                                                                        e["per_gpu_batch"]["pytorch"]))
    peak = next((e["pytorch"] for e in entries if e["benchmark"] == "gemm-peak" and e["pytorch"]), None)
    for e in entries:
        if e["benchmark"] in ("mlp", "mlp-bf16g") and e["world"] == 1:
            for eng in ("ours", "pytorch"):
                if e[eng] is None:
                    continue
                tflops = e[eng] * MLP_FLOP_PER_SAMPLE / 1e12
                md.append("%s W=1, %s: %.0f TFLOP/s = %s of the bf16 peak measured in this call (gemm-peak), %.1f%% of"
                          " the %.0f TFLOP/s KINDS.md records" % (
                              e["benchmark"], eng, tflops, "%.1f%%" % (100 * tflops / peak) if peak else "-",
                              100 * tflops / KINDS_PEAK_TFLOPS, KINDS_PEAK_TFLOPS))
    prof = [e for e in entries if "ours_profile_ms_rank0" in e]
    for e in prof:
        md.append("Phase breakdown, ours, %s W=%d, rank 0 (ms, each phase synchronized): %s" % (
            e["benchmark"], e["world"], json.dumps(e["ours_profile_ms_rank0"])))
    mp = [e for e in entries if e.get("ours_memory_plan_rank0")]
    for e in mp:
        p = e["ours_memory_plan_rank0"]
        md.append("Memory, ours, %s W=%d: peak %.2f GiB over the run (the first step records the plan), %.2f GiB held"
                  " from the second step on; step memory plan: slab %.2f GiB (most live at once %.2f GiB), replacing"
                  " %.2f GiB of buffers" % (e["benchmark"], e["world"], e.get("ours_peak_mem_gib", 0),
                                          e.get("ours_steady_mem_bytes", 0) / 2**30, p["slab_bytes"] / 2**30,
                                          p["max_live_bytes"] / 2**30, p["replaced_bytes"] / 2**30))
    tl = [e for e in entries if e.get("ours_timeline_ms_per_step")]
    if tl:
        md += ["", "Step timeline, ours (device ms per step by phase, CUDA events on the compute stream, median of the"
               " measured epochs; Note [step timeline]):", ""]
        phases = []
        for e in tl:
            for r in e["ours_timeline_ms_per_step"].values():
                for p in r:
                    if p not in phases:
                        phases.append(p)
        md.append("| benchmark | W | rank | " + " | ".join(phases) + " | sum |")
        md.append("| --- | --- | --- | " + " | ".join("---" for _ in phases) + " | --- |")
        for e in tl:
            name = e["benchmark"] + (" " + mib(e["size_bytes"]) if "size_bytes" in e else "")
            for rk, r in e["ours_timeline_ms_per_step"].items():
                if not r:
                    continue
                md.append("| %s | %d | %s | %s | %.3f |" % (name, e["world"], rk[4:], " | ".join(
                    "%.3f" % r[p] if p in r else "-" for p in phases), sum(r.values())))
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))

    if a.no_charts:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as ex:  # noqa: BLE001
        print("no charts (matplotlib: %s)" % ex)
        return
    benches = present(entries)
    fig, axes = plt.subplots(1, max(1, len(benches)), figsize=(5 * max(1, len(benches)), 4.2), squeeze=False)
    for ax, b in zip(axes[0], benches):
        es = [e for e in entries if e["benchmark"] == b]
        if not es:
            ax.set_visible(False)
            continue
        labels = ["W=%d" % e["world"] + (" " + mib(e["size_bytes"]) if "size_bytes" in e else "") for e in es]
        xs = range(len(es))
        ax.bar([x - 0.2 for x in xs], [e["ours"] or 0 for e in es], 0.4, label="spark-trainer")
        ax.bar([x + 0.2 for x in xs], [e["pytorch"] or 0 for e in es], 0.4, label="PyTorch %s" % ("DDP" if b != "allreduce" else "dist"))
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=20)
        ax.set_title("%s (%s)" % (b, es[0]["unit"]))
        ax.legend(fontsize=8)
    fig.suptitle("%s, %s, commit %s" % (card, a.date, a.commit))
    fig.tight_layout()
    fig.savefig(base + "-throughput.png", dpi=90)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for b in [b for b in benches if b in TRAINING]:
        for eng in ("ours", "pytorch"):
            pts = [(e["world"], e[eng]) for e in entries if e["benchmark"] == b and e[eng]]
            if pts:
                one = [v for w, v in pts if w == 1]
                if one:
                    ax.plot([w for w, _ in pts], [v / (w * one[0]) for w, v in pts], marker="o",
                            label="%s %s" % (b, "spark-trainer" if eng == "ours" else "PyTorch"))
    ax.set_xlabel("GPUs (W)")
    ax.set_ylabel("scaling efficiency vs W=1")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title("%s, %s" % (card, a.date))
    fig.tight_layout()
    fig.savefig(base + "-scaling.png", dpi=90)


if __name__ == "__main__":
    main()
