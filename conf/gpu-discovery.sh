#!/usr/bin/env bash
# GPU discovery script for Spark (spark.worker.resource.gpu.discoveryScript on standalone workers,
# spark.executor.resource.gpu.discoveryScript on YARN/Kubernetes, spark.driver.resource.gpu.discoveryScript).
# Prints the GPUs nvidia-smi sees as Spark's resource JSON:
#   {"name":"gpu","addresses":["0","1"]}
# Where CUDA_VISIBLE_DEVICES is set (an administrator giving each of several workers on one host its own GPUs,
# or a cluster manager doing it), prints only its entries, as written there (indices or UUIDs), in its order:
# the addresses Spark hands to tasks then name exactly the GPUs CUDA sees, and spark-trainer maps each to the
# CUDA device at its position (docs/gpu-scheduling.md, "GPU address -> CUDA device").
# Fails (exit 1, the reason on stderr) when nvidia-smi is missing or fails, when no GPU is found, or when an
# entry of CUDA_VISIBLE_DEVICES matches no GPU: Spark then names this script in its error instead of starting
# executors with fewer GPUs than configured.
set -euo pipefail

die() { echo "gpu-discovery.sh: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found on PATH ($PATH); install the NVIDIA driver"
if ! listing=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>&1); then
  die "nvidia-smi failed: $listing"
fi

indices=()
uuids=()
while IFS=',' read -r index uuid; do
  index=${index//[[:space:]]/}
  uuid=${uuid//[[:space:]]/}
  [[ $index =~ ^[0-9]+$ ]] || continue   # skips "No devices were found" and other non-GPU lines
  indices+=("$index")
  uuids+=("$uuid")
done <<< "$listing"
[ ${#indices[@]} -gt 0 ] || die "nvidia-smi lists no GPU: ${listing:-<no output>}"

addresses=()
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  IFS=',' read -r -a entries <<< "$CUDA_VISIBLE_DEVICES"
  for entry in "${entries[@]}"; do
    entry=${entry//[[:space:]]/}
    [ -n "$entry" ] || continue
    found=0
    for k in "${!indices[@]}"; do
      # CUDA accepts an index, a full UUID or a unique UUID prefix; MIG instances are passed through as written.
      if [ "$entry" = "${indices[$k]}" ] || [[ ${uuids[$k]} == "$entry"* && $entry == GPU-* ]] || [[ $entry == MIG-* ]]; then
        found=1
        break
      fi
    done
    [ $found = 1 ] || die "CUDA_VISIBLE_DEVICES entry '$entry' matches no GPU that nvidia-smi lists (indices ${indices[*]})"
    addresses+=("$entry")
  done
  [ ${#addresses[@]} -gt 0 ] || die "CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' leaves no GPU visible"
else
  addresses=("${indices[@]}")
fi

json=""
for a in "${addresses[@]}"; do
  json+="${json:+,}\"$a\""
done
echo "{\"name\":\"gpu\",\"addresses\":[$json]}"
