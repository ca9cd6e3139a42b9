#!/usr/bin/env bash
# Encode one graph into one cache with a SLURM job array: array task I runs shard I of N
# (`pipeline encode --num-shards N --shard-id I`), and a dependent job reports completion.
# See docs/scale.md for how shards, blocks and resume work.
#
# Submit from the repository root, on a filesystem every node sees:
#
#   NUM_SHARDS=16 GRAPH=/data/products OUT=/shared/caches/products-llama7b.zarr \
#   MODEL=meta-llama/Llama-2-7b-hf ENCODE_ARGS="--layers 0,5,10,15,20,25,32 --max-length 256" \
#   SBATCH_ARGS="--partition=gpu --gres=gpu:1 --cpus-per-task=8 --mem=64G --time=12:00:00" \
#   bash scripts/slurm/encode_array.sh
#
# That runs (DRY_RUN=1 prints these instead):
#   sbatch --array=0-15%MAX_PARALLEL $SBATCH_ARGS scripts/slurm/encode_array.sh task
#   sbatch --dependency=afterany:<array job> scripts/slurm/encode_array.sh status
#
# The status job exits 0 only when every block is done (3 when blocks are missing); chain training on it with
# `sbatch --dependency=afterok:<status job> ...`. When tasks failed or were preempted, submit
# again (the same command, or only the shards the status job names: ARRAY=3,7): finished
# blocks are skipped, so a rerun only does what is missing and the cache ends bit-identical.
# Every task must use the same GRAPH, MODEL and ENCODE_ARGS (the cache refuses others).
#
# Variables: NUM_SHARDS (required), GRAPH, OUT, MODEL (required), ENCODE_ARGS (extra
# `pipeline encode` flags, the same for every task), SBATCH_ARGS (resources of a task),
# MAX_PARALLEL (tasks at once, default all), ARRAY (task ids, default 0-(NUM_SHARDS-1)),
# LOG_DIR (default logs/encode), VENV (a virtualenv to activate, default .venv if present),
# PIPELINE (the command, default `pipeline`), DRY_RUN=1 (print the sbatch commands only).
set -euo pipefail

mode=${1:-submit}
: "${NUM_SHARDS:?set NUM_SHARDS, the number of array tasks (shards)}"
: "${OUT:?set OUT, the cache folder (on a filesystem every node sees)}"
LOG_DIR=${LOG_DIR:-logs/encode}
PIPELINE=${PIPELINE:-pipeline}

activate() {
    local venv=${VENV:-}
    if [[ -z $venv && -f .venv/bin/activate ]]; then venv=.venv; fi
    # shellcheck disable=SC1091
    if [[ -n $venv ]]; then source "$venv/bin/activate"; fi
}

case $mode in
submit)
    : "${GRAPH:?set GRAPH, a built-in dataset or a graph folder}"
    : "${MODEL:?set MODEL, the LLM (built-in name, local folder or hub id)}"
    array=${ARRAY:-0-$((NUM_SHARDS - 1))}
    [[ -n ${MAX_PARALLEL:-} ]] && array="$array%$MAX_PARALLEL"
    mkdir -p "$LOG_DIR"
    # shellcheck disable=SC2086  # SBATCH_ARGS is a list of flags
    task_cmd=(sbatch --parsable --job-name=encode --array="$array" --output="$LOG_DIR/encode-%A_%a.out"
              --export=ALL,NUM_SHARDS="$NUM_SHARDS" ${SBATCH_ARGS:-} "$0" task)
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        echo "${task_cmd[*]}"
        echo "sbatch --parsable --job-name=encode-status --dependency=afterany:ARRAY_JOB_ID --output=$LOG_DIR/encode-status-%j.out --export=ALL,NUM_SHARDS=$NUM_SHARDS $0 status"
        exit 0
    fi
    array_job=$("${task_cmd[@]}")
    status_job=$(sbatch --parsable --job-name=encode-status --dependency=afterany:"${array_job%%;*}" \
        --output="$LOG_DIR/encode-status-%j.out" --export=ALL,NUM_SHARDS="$NUM_SHARDS" "$0" status)
    echo "array job $array_job (shards $array of $NUM_SHARDS), status job $status_job; logs in $LOG_DIR/"
    ;;
task)
    : "${SLURM_ARRAY_TASK_ID:?task mode runs inside a SLURM array task}"
    : "${GRAPH:?GRAPH is not set (submit with --export=ALL)}" "${MODEL:?MODEL is not set (submit with --export=ALL)}"
    activate
    # NUM_SHARDS comes from the submitter, never from SLURM_ARRAY_TASK_COUNT: a resubmission of
    # some shards (ARRAY=3,7) is still shard 3 and 7 of NUM_SHARDS.
    # shellcheck disable=SC2086  # ENCODE_ARGS is a list of flags
    exec "$PIPELINE" encode "$GRAPH" --out "$OUT" --model "$MODEL" ${ENCODE_ARGS:-} \
        --num-shards "$NUM_SHARDS" --shard-id "$SLURM_ARRAY_TASK_ID"
    ;;
status)
    activate
    # `--status` prints the missing shards and the exact commands that complete them; it exits
    # 0 when the cache is complete, 3 when it is not (2: no readable cache)
    exec "$PIPELINE" encode --status "$OUT"
    ;;
*)
    echo "usage: $0 [submit|task|status]   (see the comments at the top)" >&2
    exit 2
    ;;
esac
