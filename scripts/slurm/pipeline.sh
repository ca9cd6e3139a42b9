#!/usr/bin/env bash
# The whole pipeline as one chain of SLURM jobs, each starting only when the one before it
# succeeded (sbatch --dependency): encode as a job array, its completion check, training under
# torchrun, prediction as a job array, its completion check and assembly, and the report.
# See docs/scale.md ("One recipe, end to end").
#
# Submit from the repository root, on a filesystem every node sees:
#
#   GRAPH=/data/products MODEL=meta-llama/Llama-2-7b-hf WORK=/shared/products-llama7b \
#   ENCODE_SHARDS=16 INFER_PARTS=8 TRAIN_PROCS=4 \
#   ENCODE_ARGS="--layers 0,5,10,15,20,25,32 --max-length 256" INFER_ARGS="--split test" \
#   SBATCH_ARGS="--partition=gpu --time=12:00:00" \
#   ENCODE_SBATCH="--gres=gpu:1 --mem=64G" TRAIN_SBATCH="--gres=gpu:4" INFER_SBATCH="--gres=gpu:1" \
#   bash scripts/slurm/pipeline.sh
#
# That submits six jobs (DRY_RUN=1 prints the sbatch commands instead), writing under WORK:
#   encode         --array=0-(ENCODE_SHARDS-1): scripts/slurm/encode_array.sh task -> WORK/cache.zarr
#   encode-status  afterany:encode   `pipeline encode --status`: exit 0 complete, 3 blocks missing
#   train          afterok:encode-status   torchrun --nproc-per-node TRAIN_PROCS pipeline train -> WORK/run
#   infer          afterok:train --array=0-(INFER_PARTS-1): `pipeline infer --shard I/INFER_PARTS`
#                  -> WORK/predictions.parts/part-I-of-N/
#   assemble       afterany:infer   `pipeline infer --status` (exit 0 all parts done, 3 not),
#                  then `pipeline infer --assemble` -> WORK/predictions
#   report         afterok:assemble   `pipeline report` -> WORK/report
# A job that fails (or a check that exits 3) leaves the jobs after it pending with
# DependencyNeverSatisfied; cancel them (scancel), then resubmit. Every stage resumes: finished
# encode blocks, trained seeds and predicted parts are skipped, so FROM=train (or infer,
# assemble, report) submits the chain from that stage on, and ARRAY=3,7 (with FROM=encode or
# FROM=infer) only those tasks of the first array. The part count always comes from
# ENCODE_SHARDS and INFER_PARTS, never from the size of a resubmitted array.
#
# Variables: GRAPH, MODEL (required from FROM=encode), WORK (required), ENCODE_SHARDS and
# INFER_PARTS (default 1), TRAIN_PROCS (torchrun processes on one node, default 1),
# ENCODE_ARGS, TRAIN_ARGS, INFER_ARGS, REPORT_ARGS (extra flags of each command; INFER_ARGS
# chooses the targets, default every node), SBATCH_ARGS (every job), ENCODE_SBATCH,
# TRAIN_SBATCH, INFER_SBATCH (one stage's resources), MAX_PARALLEL (array tasks at once),
# FROM (encode|train|infer|assemble|report, default encode), ARRAY (task ids of the first
# array), LOG_DIR (default WORK/logs), VENV (a virtualenv to activate, default .venv if
# present), PIPELINE (the command, default `pipeline`), TORCHRUN (default `torchrun`),
# DRY_RUN=1 (print the sbatch commands only).
set -euo pipefail

mode=${1:-submit}
: "${WORK:?set WORK, the folder of every output (on a filesystem every node sees)}"
CACHE=$WORK/cache.zarr RUN=$WORK/run PRED=$WORK/predictions REPORT=$WORK/report
ENCODE_SHARDS=${ENCODE_SHARDS:-1} INFER_PARTS=${INFER_PARTS:-1} TRAIN_PROCS=${TRAIN_PROCS:-1}
LOG_DIR=${LOG_DIR:-$WORK/logs}
PIPELINE=${PIPELINE:-pipeline}
TORCHRUN=${TORCHRUN:-torchrun}
here=$(dirname "$0")

activate() {
    local venv=${VENV:-}
    if [[ -z $venv && -f .venv/bin/activate ]]; then venv=.venv; fi
    # shellcheck disable=SC1091
    if [[ -n $venv ]]; then source "$venv/bin/activate"; fi
}

# submit JOB_NAME DEPENDENCY ARRAY STAGE_SBATCH SCRIPT MODE: print the job id (DRY_RUN: the command)
submit_job() {
    local name=$1 dep=$2 array=$3 stage_args=$4 script=$5 job_mode=$6 out
    out=$LOG_DIR/$name-%j.out
    [[ -n $array ]] && out=$LOG_DIR/$name-%A_%a.out
    # shellcheck disable=SC2206  # SBATCH_ARGS and the stage's are lists of flags
    local cmd=(sbatch --parsable --job-name="$name" ${dep:+--dependency=$dep} ${array:+--array=$array}
               --output="$out" --export=ALL,NUM_SHARDS="$ENCODE_SHARDS",OUT="$CACHE" ${SBATCH_ARGS:-} $stage_args
               "$script" "$job_mode")
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        echo "${cmd[*]}" >&3  # the job's id stands in for its number
        echo "$name"
        return
    fi
    local id
    id=$("${cmd[@]}")
    echo "${id%%;*}"  # --parsable prints ID or ID;CLUSTER
}

case $mode in
submit)
    stages=(encode train infer assemble report)
    from=${FROM:-encode}
    [[ " ${stages[*]} " == *" $from "* ]] || { echo "FROM=$from: choose one of ${stages[*]}" >&2; exit 2; }
    if [[ $from == encode ]]; then
        : "${GRAPH:?set GRAPH, a built-in dataset or a graph folder}"
        : "${MODEL:?set MODEL, the LLM (built-in name, local folder or hub id)}"
    fi
    [[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$LOG_DIR"
    exec 3>&1  # DRY_RUN's commands, past the $(...) that takes each job id
    limit=${MAX_PARALLEL:+%$MAX_PARALLEL}
    dep="" started="" summary=()
    for stage in "${stages[@]}"; do
        [[ $stage == "$from" ]] && started=1
        [[ -z $started ]] && continue
        first=$([[ $stage == "$from" ]] && echo 1 || echo "")
        case $stage in
        encode)
            array=${first:+${ARRAY:-}}; array=${array:-0-$((ENCODE_SHARDS - 1))}$limit
            id=$(submit_job encode "$dep" "$array" "${ENCODE_SBATCH:-}" "$here/encode_array.sh" task)
            summary+=("encode $id")
            id=$(submit_job encode-status "afterany:$id" "" "" "$here/encode_array.sh" status)
            summary+=("encode-status $id") ;;
        train)
            id=$(submit_job train "$dep" "" "${TRAIN_SBATCH:-}" "$0" train)
            summary+=("train $id") ;;
        infer)
            array=${first:+${ARRAY:-}}; array=${array:-0-$((INFER_PARTS - 1))}$limit
            id=$(submit_job infer "$dep" "$array" "${INFER_SBATCH:-}" "$0" infer)
            summary+=("infer $id")
            # assembly checks whatever became of the parts, and fails the chain when one is missing
            dep=afterany:$id
            continue ;;
        assemble)
            id=$(submit_job assemble "$dep" "" "" "$0" assemble)
            summary+=("assemble $id") ;;
        report)
            id=$(submit_job report "$dep" "" "" "$0" report)
            summary+=("report $id") ;;
        esac
        dep=afterok:$id
    done
    [[ ${DRY_RUN:-0} == 1 ]] && exit 0
    echo "jobs: ${summary[*]}; outputs in $WORK/, logs in $LOG_DIR/"
    ;;
train)
    activate
    # one node, TRAIN_PROCS ranks; a rerun resumes from RUN.resume/ (finished seeds are kept)
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
    exec "$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$TRAIN_PROCS" --no-python \
        "$PIPELINE" train "$CACHE" --out "$RUN" ${TRAIN_ARGS:-}
    ;;
infer)
    : "${SLURM_ARRAY_TASK_ID:?infer mode runs inside a SLURM array task}"
    activate
    # the part count is INFER_PARTS from the submitter, so a resubmission of some tasks
    # (ARRAY=3,7) still predicts parts 3 and 7 of INFER_PARTS
    # shellcheck disable=SC2086  # INFER_ARGS is a list of flags
    exec "$PIPELINE" infer --checkpoint "$RUN" --out "$PRED" ${INFER_ARGS:-} \
        --shard "$SLURM_ARRAY_TASK_ID/$INFER_PARTS"
    ;;
assemble)
    activate
    # `--status` lists the missing parts with the command for each; exit 0 all done, 3 not
    "$PIPELINE" infer --config "$PRED.parts/infer_config.json" --status || exit $?
    exec "$PIPELINE" infer --config "$PRED.parts/infer_config.json" --assemble
    ;;
report)
    activate
    # shellcheck disable=SC2086  # REPORT_ARGS is a list of flags
    exec "$PIPELINE" report "$CACHE" "$RUN" "$PRED" --out "$REPORT" ${REPORT_ARGS:-}
    ;;
*)
    echo "usage: $0 [submit|train|infer|assemble|report]   (see the comments at the top)" >&2
    exit 2
    ;;
esac
