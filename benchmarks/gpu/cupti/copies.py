#!/usr/bin/env python3
"""Summarizes the copies (CUPTI MEMCPY records, type M) in kernel_trace.c's CSV beside the kernels: per device, over
the last WINDOW seconds of its work, per stream the copies by (copy kind, bytes): count, mean duration and GB/s, and
how much of the window each stream spent copying or running kernels; with --dump, the window's rows (all kinds) as
CSV. CUPTI copy kinds: 8 = device to device, 10 = peer to peer. Usage: copies.py [--window S] [--dump F] trace.csv"""
import argparse, collections, csv, gzip

ap = argparse.ArgumentParser()
ap.add_argument("--window", type=float, default=1.0, help="seconds before the device's last record (minus 0.2 s)")
ap.add_argument("--dump", help="write the window's rows (all devices) to this .csv.gz")
ap.add_argument("trace")
a = ap.parse_args()

rows = collections.defaultdict(list)
with open(a.trace) as f:
    for r in csv.DictReader(f):
        rows[int(r["device"])].append(r)
dumped = []
for dev, rs in sorted(rows.items()):
    t_end = max(int(r["end"]) for r in rs) - 200_000_000
    t0 = t_end - int(a.window * 1e9)
    win = [r for r in rs if t0 <= int(r["start"]) and int(r["end"]) <= t_end]
    dumped += win
    busy = collections.defaultdict(lambda: [0, 0])  # stream -> [kernel ns, copy ns]
    copies = collections.defaultdict(list)  # (stream, name) -> durations
    for r in win:
        d = int(r["end"]) - int(r["start"])
        busy[int(r["stream"])][0 if r["type"] == "K" else 1] += d
        if r["type"] == "M":
            copies[(int(r["stream"]), r["name"])].append(d)
    print(f"device {dev}: window {a.window * 1e3:.0f} ms")
    for s, (k, c) in sorted(busy.items()):
        print(f"  stream {s}: kernels {k / 1e6:8.2f} ms ({100 * k / (a.window * 1e9):5.1f}%), "
              f"copies {c / 1e6:8.2f} ms ({100 * c / (a.window * 1e9):5.1f}%)")
    for (s, name), ds in sorted(copies.items(), key=lambda x: -sum(x[1])):
        nbytes = int(name.rsplit(" ", 1)[1])
        mean = sum(ds) / len(ds)
        print(f"  stream {s}: {name}: {len(ds)} x {mean / 1e3:9.1f} us, {nbytes / mean:7.1f} GB/s")
if a.dump:
    with gzip.open(a.dump, "wt") as f:
        w = csv.DictWriter(f, fieldnames=list(dumped[0].keys()))
        w.writeheader()
        w.writerows(dumped)
