#!/usr/bin/env bash
# Re-measure the fine-tuning rows of docs/results.md fairly: for each of lora, ia3 and finetune,
# train seeds 0-2 at each learning rate of a small grid (patience 2, at most 3 epochs), keep the
# learning rate of best mean validation accuracy, and print its run folder for
# scripts/results_cost.py. Hours of CPU at 32 tokens on SmolLM2-135M; minutes on a GPU.
#
#   bash scripts/finetune_lr_grid.sh CACHE OUT_ROOT [SPLIT]
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CACHE OUT_ROOT [SPLIT]" >&2; exit 2; fi
CACHE=$1; ROOT=$2; SPLIT=${3:-random_60_20_20}
PY=${PYTHON:-python}
declare -A GRID=([lora]="3e-4 1e-3 3e-3" [ia3]="1e-3 3e-3 1e-2" [finetune]="1e-5 3e-5 1e-4")
for arch in lora ia3 finetune; do
  for lr in ${GRID[$arch]}; do
    out=$ROOT/$arch-lr$lr
    [ -f "$out/summary.json" ] || pipeline train "$CACHE" --arch "$arch" --out "$out" --seeds 0,1,2 --split "$SPLIT" \
      --lr "$lr" --epochs 3 --patience 2 --num-threads "${THREADS:-1}"
  done
  best=$($PY - "$ROOT" "$arch" ${GRID[$arch]} <<'PYEOF'
import json, sys
root, arch, *lrs = sys.argv[1:]
runs = [f"{root}/{arch}-lr{lr}" for lr in lrs]
print(max(runs, key=lambda r: json.load(open(f"{r}/summary.json"))["val_acc_mean"]))
PYEOF
)
  echo "$arch: best learning rate on validation: $best"
  ln -sfn "$(basename "$best")" "$ROOT/$arch-best"
done
