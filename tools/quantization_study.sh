#!/usr/bin/env bash
# What bf16 and int8 FFF weights cost in accuracy on trained nets: trains the default FFF net
# (seed 0, 5 epochs) and the study's best FFF net (a forest of 4 identity trees per layer) on
# MNIST and Fashion-MNIST, then evaluates each checkpoint with f32, bf16 and int8 FFF weights
# and writes docs/quantization_mnist.json (one row per checkpoint and format).
#
#   bash tools/quantization_study.sh [DATA_DIR]   # DATA_DIR: local MNIST folders (default: download)
set -euo pipefail
cd "$(dirname "$0")/.."
data=(); [ $# -ge 1 ] && data=(--data-dir "$1")
fff=target/release/fff
cargo build --release -p fff-cli -q
out=docs/quantization_mnist.json
runs=work/quantization
rm -f "$out.tmp"
for dataset in mnist fashion-mnist; do
  for net in default forest; do
    dir="$runs/$dataset-$net"
    model=()
    [ "$net" = forest ] && model=(--model "fff:784-500:d6:k4:identity, relu, fff:500-10:d6:k4:identity")
    if [ ! -f "$dir/state.json" ]; then
      "$fff" train --dataset "$dataset" "${data[@]}" "${model[@]}" --epochs 5 --seed 0 --out "$dir"
    fi
    for w in f32 bf16 int8; do
      "$fff" eval "$dir" --dataset "$dataset" "${data[@]}" --weights "$w" --json "$out.tmp"
    done
  done
done
mv "$out.tmp" "$out"
echo "wrote $out"
