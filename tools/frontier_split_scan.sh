#!/bin/bash
# One-seed scan of how the frontier's budget (about 45 visited nodes of 784 + W multiply-adds)
# is split between trees, depth and width: each split trains as `fff:784-W:dD:kK:identity,
# relu, linear:W-10`, 15 epochs, cosine, distilled from TEACHER (a finished `dense` run of the
# frontier), and the table of validation and test accuracy goes to docs/frontier_split_scan.md.
# Finished splits (a metrics.json in OUT/NAME) are read back, not trained again.
#   bash tools/frontier_split_scan.sh DATA_DIR TEACHER_DIR OUT_DIR
set -euo pipefail
data="${1:?DATA_DIR}" teacher="${2:?TEACHER_DIR}" out="${3:?OUT_DIR}"
fff="${FFF:-target/release/fff}"
splits="k5:d8:64 k9:d4:64 k15:d2:64 k4:d8:128 k22:d1:64 k13:d2:128 k11:d3:64 k7:d4:128
k16:d2:32 k11:d2:256 k8:d2:512 k16:d1:256 k6:d4:256 k10:d3:128"
for s in $splits; do
    IFS=: read -r k d w <<<"$s"
    name="fff_784-${w}_${d}_${k}_identity"
    [ -f "$out/$name/metrics.json" ] && continue
    "$fff" train --dataset mnist --data-dir "$data" \
        --model "fff:784-$w:$d:$k:identity, relu, linear:$w-10" --epochs 15 --schedule cosine \
        --validation 5000 --teacher "$teacher" --out "$out/$name"
done
python3 - "$out" $splits > docs/frontier_split_scan.md <<'PY'
import json, sys
out, splits = sys.argv[1], sys.argv[2:]
cpu = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), "?")
simd = "AVX-512" if " avx512f" in cpu else "AVX2" if " avx2" in cpu else "no AVX2"
print("One seed (0), MNIST, 15 epochs, cosine, distilled (alpha 0.5, T 4) from the frontier's "
      f"`dense` run of seed 0; {model} ({simd}), 2 threads; `bash tools/frontier_split_scan.sh`.\n")
print("| trees | depth | width | multiply-adds per input | validation | test |")
print("|---:|---:|---:|---:|---:|---:|")
for s in splits:
    k, d, w = s.split(":")
    m = json.load(open(f"{out}/fff_784-{w}_{d}_{k}_identity/metrics.json"))[-1]
    K, D, W = int(k[1:]), int(d[1:]), int(w)
    macs = K * (D + 1) * (784 + W) + W * 10
    print(f"| {K} | {D} | {W} | {macs} | {100*m['val_accuracy']:.2f}% | {100*m['test_accuracy']:.2f}% |")
PY
echo "wrote docs/frontier_split_scan.md"
