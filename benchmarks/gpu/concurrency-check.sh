#!/usr/bin/env bash
# Does one GPU slow down while the other GPU of the machine is busy too (power, clocks, host), with no
# communication between them? Runs ResNet-50 W=1 on GPU 0 alone, then on GPUs 0 and 1 at once as two
# independent processes, for ours (GpuBench, with its step timeline) and PyTorch (torch_ref.py), sampling SM
# clocks and power with nvidia-smi. Needs run-suite.sh's native build first (it runs it for the alone case).
# Device tool: carry [".device/perf"], kind nvidia-h100-x2, command: bash benchmarks/gpu/concurrency-check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/conc-out}
export STAGE_DIR=${STAGE_DIR:-.device/perf} BENCHES=resnet50 COMMIT=${COMMIT:-unknown}
nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu --format=csv,noheader -lms 500 \
  > "$out/smi.csv" 2>&1 &
smi=$!
echo "$(date +%T.%N) alone start" > "$out/marks.txt"
WORLDS=1 LABEL=alone bash benchmarks/gpu/run-suite.sh > "$out/alone.log" 2>&1
echo "$(date +%T.%N) together start" >> "$out/marks.txt"
source "$STAGE_DIR/env.sh"
cp="$(ls "$STAGE_DIR"/jars/*.jar | tr '\n' ':')"
jni=/tmp/st-native-build/out/libsparktrainer_jni.so
pids=()
for g in 0 1; do
  CUDA_VISIBLE_DEVICES=$g java -Xmx24g -Dsparktrainer.jni.path="$jni" -Dsparktrainer.cudnn.benchmark=true \
    -cp "$cp" dev.sparktrainer.bench.gpu.GpuBench --world 1 --benches resnet50 --out /tmp/conc-ours-$g.jsonl \
    --repeats 3 --resnet-batch 256 --resnet-steps 20 > "$out/ours-gpu$g.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "$(date +%T.%N) torch alone start" >> "$out/marks.txt"
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/gpu/torch_ref.py --world 1 --benches resnet50 --out /tmp/conc-torch-alone.jsonl \
  --repeats 3 --resnet-batch 256 --resnet-steps 20 > "$out/torch-alone.log" 2>&1
echo "$(date +%T.%N) torch together start" >> "$out/marks.txt"
pids=()
for g in 0 1; do
  CUDA_VISIBLE_DEVICES=$g python3 benchmarks/gpu/torch_ref.py --world 1 --benches resnet50 \
    --out /tmp/conc-torch-$g.jsonl --repeats 3 --resnet-batch 256 --resnet-steps 20 > "$out/torch-gpu$g.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "$(date +%T.%N) end" >> "$out/marks.txt"
kill $smi
python3 - "$out" <<'PY'
import json, sys, glob
out = sys.argv[1]
def rows(f):
    try:
        return [json.loads(l) for l in open(f) if l.strip()]
    except FileNotFoundError:
        return []
lines = ["# ResNet-50 W=1 on GPU 0 alone vs on both GPUs at once (independent processes)", ""]
alone = json.load(open(out + "/alone-run1.json"))
for e in alone:
    lines.append("ours alone (GPU 0): %.1f img/s, repeats %s, timeline %s" % (
        e["ours"], e["ours_repeats"], json.dumps(e.get("ours_timeline_ms_per_step"))))
for g in (0, 1):
    for r in rows("/tmp/conc-ours-%d.jsonl" % g):
        lines.append("ours together, GPU %d: %.1f img/s, repeats %s, timeline %s" % (
            g, r["value"], r["repeats"], json.dumps(r.get("timeline_ms_per_step"))))
for name, f in [("torch alone (GPU 0)", "/tmp/conc-torch-alone.jsonl"), ("torch together, GPU 0", "/tmp/conc-torch-0.jsonl"),
                ("torch together, GPU 1", "/tmp/conc-torch-1.jsonl")]:
    for r in rows(f):
        lines.append("%s: %.1f img/s, repeats %s" % (name, r["value"], r.get("repeats")))
open(out + "/concurrency.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
