#!/usr/bin/env python3
"""Summarizes the copies (CUPTI MEMCPY records, type M) in kernel_trace.c's CSV beside the kernels: per device, over
the last WINDOW seconds of its work, per stream the copies by (copy kind, bytes): count, mean duration and GB/s, and
how much of the window each stream spent copying or running kernels (overlapping records merged); with --dump, the
window's rows (all kinds) as CSV. kernel_trace.c enables CUPTI_ACTIVITY_KIND_MEMCPY only, so copies between GPUs
(MEMCPY2 records) do not show: of NCCL's copy-engine all-to-all, only each rank's copy of its own chunk does. CUPTI
copy kinds: 1 = host to device, 8 = device to device. Usage: copies.py [--window S] [--dump F] trace.csv"""
import argparse, collections, csv, gzip

ap = argparse.ArgumentParser()
ap.add_argument("--window", type=float, default=1.0, help="seconds before the device's last record (minus 0.2 s)")
ap.add_argument("--dump", help="write the window's rows (all devices) to this .csv.gz")
ap.add_argument("trace")
a = ap.parse_args()


def busy_ns(intervals):
    """Time covered by the union of [start, end) intervals."""
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


rows = collections.defaultdict(list)
with open(a.trace) as f:
    for r in csv.DictReader(f):
        rows[int(r["device"])].append(r)
dumped = []
for dev, rs in sorted(rows.items()):
    t_end = max(int(r["end"]) for r in rs) - 200_000_000
    t0 = max(t_end - int(a.window * 1e9), min(int(r["start"]) for r in rs))
    span = t_end - t0
    win = [r for r in rs if t0 <= int(r["start"]) and int(r["end"]) <= t_end]
    dumped += win
    print(f"device {dev}: window {span / 1e6:.0f} ms, {len(win)} records")
    if span <= 0 or not win:
        continue
    spans = collections.defaultdict(lambda: ([], []))  # stream -> (kernel intervals, copy intervals)
    copies = collections.defaultdict(list)  # (stream, name) -> durations
    for r in win:
        s, e = int(r["start"]), int(r["end"])
        spans[int(r["stream"])][0 if r["type"] == "K" else 1].append((s, e))
        if r["type"] == "M":
            copies[(int(r["stream"]), r["name"])].append(e - s)
    for st, (ks, cs) in sorted(spans.items()):
        k, c = busy_ns(ks), busy_ns(cs)
        print(f"  stream {st}: kernels {k / 1e6:8.2f} ms ({100 * k / span:5.1f}%), "
              f"copies {c / 1e6:8.2f} ms ({100 * c / span:5.1f}%)")
    for (st, name), ds in sorted(copies.items(), key=lambda x: -sum(x[1])):
        nbytes = int(name.rsplit(" ", 1)[1])
        mean = sum(ds) / len(ds)
        rate = f"{nbytes / mean:7.1f} GB/s" if mean > 0 else "-"
        print(f"  stream {st}: {name}: {len(ds)} x {mean / 1e3:9.1f} us, {rate}")
if a.dump and dumped:
    with gzip.open(a.dump, "wt") as f:
        w = csv.DictWriter(f, fieldnames=list(dumped[0].keys()))
        w.writeheader()
        w.writerows(dumped)
