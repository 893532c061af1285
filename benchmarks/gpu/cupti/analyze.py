#!/usr/bin/env python3
"""Summarizes kernel_trace.c's CSV (one or more runs): per device, over the last WINDOW seconds of its work (the
measured epochs), the compute stream's busy time, the gaps between its kernels (split by whether the next
kernel reached the GPU late, i.e. the host queued it after the previous one ended, or the GPU had it and still
waited), the other streams' kernels (NCCL), and per kernel name the mean duration; with two runs, the kernels
whose time per step changed most. Usage: analyze.py [--window S] [--steps N] label=trace.csv ..."""
import argparse, collections, csv, sys

ap = argparse.ArgumentParser()
ap.add_argument("--window", type=float, default=2.5, help="seconds before the device's last kernel (minus 0.2 s)")
ap.add_argument("--steps", type=float, default=0, help="steps in the window per device (for per-step figures)")
ap.add_argument("--dump", help="folder: write each run's window (all devices, all streams) as <label>.csv.gz")
ap.add_argument("--top", type=int, default=15, help="per run: the compute stream's N kernels of most time")
ap.add_argument("runs", nargs="+")
a = ap.parse_args()

def load(path):
    by_dev = collections.defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["type"] != "K":
                continue
            by_dev[int(r["device"])].append((int(r["start"]), int(r["end"]), int(r["queued"]), int(r["submitted"]),
                                             int(r["stream"]), r["name"]))
    return by_dev

stats = {}
for spec in a.runs:
    label, path = spec.split("=", 1)
    for dev, ks in sorted(load(path).items()):
        ks.sort()
        t_end = max(k[1] for k in ks) - 200_000_000
        t0 = t_end - int(a.window * 1e9)
        win = [k for k in ks if t0 <= k[0] and k[1] <= t_end]
        per_stream = collections.Counter()
        for k in win:
            per_stream[k[4]] += k[1] - k[0]
        compute = per_stream.most_common(1)[0][0]
        cs = [k for k in win if k[4] == compute]
        gaps_late = gaps_gpu = 0
        n_late = n_gpu = 0
        for p, k in zip(cs, cs[1:]):
            g = k[0] - p[1]
            if g <= 0:
                continue
            if k[3] and k[3] > p[1]:  # submitted after the previous kernel ended: the GPU waited for the host
                gaps_late += g; n_late += 1
            else:
                gaps_gpu += g; n_gpu += 1
        span = cs[-1][1] - cs[0][0]
        busy = sum(k[1] - k[0] for k in cs)
        others = {s: t / 1e6 for s, t in per_stream.items() if s != compute}
        names = collections.defaultdict(lambda: [0, 0])
        for k in cs:
            names[k[5]][0] += k[1] - k[0]; names[k[5]][1] += 1
        lead = sorted(k[1] - k[3] for k in cs if k[3])  # end - submitted (the command buffer's push)
        ahead = sorted(k[0] - k[2] for k in cs if k[2])  # start - queued: how far ahead of the GPU the host launched
        steps = a.steps or 1
        print(f"[{label}] device {dev}: window {span/1e6:.1f} ms, compute stream {compute}: {len(cs)} kernels, busy "
              f"{busy/1e6:.1f} ms ({100*busy/span:.2f}%), gaps: host-late {gaps_late/1e6:.2f} ms in {n_late}, "
              f"GPU-side {gaps_gpu/1e6:.2f} ms in {n_gpu}; other streams (ms): "
              + ", ".join(f"{s}: {t:.1f}" for s, t in others.items())
              + (f"; host lead (end - submitted) p5/p50 {lead[len(lead)//20]/1e6:.2f}/{lead[len(lead)//2]/1e6:.2f} ms"
                 if lead else "")
              + (f"; host ahead (start - queued) p5/p50/p95 {ahead[len(ahead)//20]/1e6:.2f}/{ahead[len(ahead)//2]/1e6:.2f}/"
                 f"{ahead[len(ahead)*19//20]/1e6:.2f} ms" if ahead else ""))
        if a.dump:
            import gzip, os
            os.makedirs(a.dump, exist_ok=True)
            with gzip.open(os.path.join(a.dump, f"{label}-dev{dev}.csv.gz"), "wt") as f:
                f.write("device,stream,start,end,queued,submitted,name\n")
                for k in win:
                    f.write(f"{dev},{k[4]},{k[0]},{k[1]},{k[2]},{k[3]},{k[5]}\n")
        stats[(label, dev)] = (names, span, len(cs))
        if a.top and dev == min(d for (l, d) in stats if l == label):
            print(f"[{label}] device {dev}: top kernels of the compute stream (share of the window, count, mean us):")
            for n, (t, c) in sorted(names.items(), key=lambda x: -x[1][0])[:a.top]:
                print(f"  {100*t/span:6.2f}%  {c:6d}  {t/c/1e3:9.1f}  {n[:90]}")

labels = list(dict.fromkeys(l for l, _ in stats))
if len(labels) >= 2:
    (la, lb) = labels[:2]
    a_names, a_span, _ = stats[(la, 0)]
    b_names, b_span, _ = stats[(lb, 0)]
    rows = []
    for n in set(a_names) | set(b_names):
        ta, ca = a_names.get(n, [0, 0]); tb, cb = b_names.get(n, [0, 0])
        ma = ta / ca if ca else 0; mb = tb / cb if cb else 0
        # time per ms of window, so windows of different length compare
        rows.append((tb / b_span - ta / a_span, n, ca, cb, ma / 1e3, mb / 1e3))
    rows.sort(reverse=True)
    print(f"device 0, kernel time share change {lb} vs {la} (per mille of the window), count, mean us:")
    for d, n, ca, cb, ma, mb in rows[:25]:
        print(f"  {1000*d:+.2f}  {ca:6d} {cb:6d}  {ma:8.1f} {mb:8.1f}  ({100*(mb-ma)/ma if ma else 0:+.1f}%)  {n[:70]}")
    tot_a = sum(v[0] for v in a_names.values()) / a_span; tot_b = sum(v[0] for v in b_names.values()) / b_span
    print(f"  busy share {la} {tot_a:.4f}, {lb} {tot_b:.4f}")
