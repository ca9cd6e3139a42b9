#!/usr/bin/env bash
# Encode one graph on one machine with several GPUs: one `pipeline encode` process per GPU
# (CUDA_VISIBLE_DEVICES=<that GPU>), each filling its shard of the same cache, then a status
# report. See docs/scale.md for how shards, blocks and resume work.
#
#   GRAPH=/data/arxiv OUT=artifacts/caches/arxiv-llama7b.zarr MODEL=meta-llama/Llama-2-7b-hf \
#   ENCODE_ARGS="--layers 0,5,10,15,20,25,32" bash scripts/slurm/encode_multi_gpu.sh
#
# As a SLURM job on one node: `sbatch --nodes=1 --gres=gpu:8 --cpus-per-task=32 --export=ALL
# scripts/slurm/encode_multi_gpu.sh` (SLURM sets CUDA_VISIBLE_DEVICES to the GPUs it gave).
#
# GPUs: those in CUDA_VISIBLE_DEVICES when it is set, else every GPU nvidia-smi lists, or
# GPUS="0 1 2 3". PROCS_PER_GPU=2 runs two shards per GPU (small models leave a GPU idle
# between batches). Killed or failed? Run the same command again: finished blocks are
# skipped. Exit status: 0 the cache is complete, 3 blocks are missing, 1 a shard failed.
#
# Variables: GRAPH, OUT, MODEL (required), ENCODE_ARGS (extra `pipeline encode` flags),
# GPUS, PROCS_PER_GPU (default 1), LOG_DIR (default logs/encode), VENV (default .venv if
# present), PIPELINE (default `pipeline`), DRY_RUN=1 (print the commands only).
set -euo pipefail

: "${GRAPH:?set GRAPH, a built-in dataset or a graph folder}"
: "${OUT:?set OUT, the cache folder}"
: "${MODEL:?set MODEL, the LLM (built-in name, local folder or hub id)}"
LOG_DIR=${LOG_DIR:-logs/encode}
PIPELINE=${PIPELINE:-pipeline}
PROCS_PER_GPU=${PROCS_PER_GPU:-1}

if [[ -n ${GPUS:-} ]]; then
    read -r -a gpus <<<"$GPUS"
elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
else
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
fi
(( ${#gpus[@]} > 0 )) || { echo "no GPU found: set GPUS or CUDA_VISIBLE_DEVICES" >&2; exit 2; }
num_shards=$(( ${#gpus[@]} * PROCS_PER_GPU ))
# CPU threads per process: the node's cores shared out, so processes do not oversubscribe
threads=$(( $(nproc) / num_shards )); (( threads >= 1 )) || threads=1

venv=${VENV:-}
[[ -z $venv && -f .venv/bin/activate ]] && venv=.venv
# shellcheck disable=SC1091
[[ -n $venv && ${DRY_RUN:-0} != 1 ]] && source "$venv/bin/activate"
mkdir -p "$LOG_DIR"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 143' TERM INT  # preemption: stop the shards, resume later
for (( shard = 0; shard < num_shards; shard++ )); do
    gpu=${gpus[$(( shard % ${#gpus[@]} ))]}
    # shellcheck disable=SC2086  # ENCODE_ARGS is a list of flags
    cmd=("$PIPELINE" encode "$GRAPH" --out "$OUT" --model "$MODEL" ${ENCODE_ARGS:-} --device cuda
         --num-shards "$num_shards" --shard-id "$shard")
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        echo "CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=$threads ${cmd[*]} > $LOG_DIR/shard-$shard.log"
        continue
    fi
    CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=$threads "${cmd[@]}" >"$LOG_DIR/shard-$shard.log" 2>&1 &
    pids+=($!)
done
[[ ${DRY_RUN:-0} == 1 ]] && { echo "$PIPELINE encode --status $OUT"; exit 0; }

failed=0
for shard in "${!pids[@]}"; do
    if ! wait "${pids[$shard]}"; then
        echo "shard $shard failed: see $LOG_DIR/shard-$shard.log" >&2
        failed=1
    fi
done
# exit 0 complete, 3 blocks missing (it prints the command for each), 2 no readable cache
status=0
"$PIPELINE" encode --status "$OUT" || status=$?
if (( status == 0 && failed )); then status=1; fi
exit "$status"
