#!/usr/bin/env bash
# One row of docs/results.md's accuracy tables: the ladder on today's defaults and the
# same-encoder baselines (MLP, GCN, SAGE, each with and without --standardize, plus any
# variant given), seeds 0-4, one torch thread each. A run whose summary.json exists is skipped,
# so a killed study continues where it stopped.
#
#   bash scripts/accuracy_rows.sh CACHE OUT_DIR SPLIT ["--arch sage --standardize --dropout 0.7" ...]
#
# Run folders: OUT_DIR/{mlp,mlp-std,gcn,gcn-std,sage,sage-std,<variant>,ladder}; then
# scripts/results_accuracy.py picks the baseline of best validation accuracy.
set -uo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 CACHE OUT_DIR SPLIT [BASELINE_VARIANT...]" >&2; exit 2; fi
cache=$1 out=$2 split=$3; shift 3
mkdir -p "$out"
run() {
  local name=$1; shift
  [ -f "$out/$name/summary.json" ] && return 0
  echo "$(date -Is) start $out/$name"
  OMP_NUM_THREADS=1 pipeline --quiet train "$cache" --out "$out/$name" --seeds 0,1,2,3,4 --split "$split" \
    --num-threads 1 "$@" > "$out/$name.log" 2>&1
  echo "$(date -Is) done $out/$name rc=$?"
}
for a in mlp gcn sage; do run "$a-std" --arch "$a" --standardize; run "$a" --arch "$a"; done
for v in "$@"; do run "$(echo "$v" | tr ' ' '_' | tr -d '-')" $v; done
run ladder
