#!/usr/bin/env bash
# Nightly (or hourly) update of a growing graph: encode only what changed, warm-start training,
# predict the new nodes, write the report; switch to the new version only when every step worked.
#
#   bash scripts/cron_update.sh GRAPH_DIR OUTPUTS_DIR
#
# OUTPUTS_DIR holds one folder per version and a `current` link naming the live one:
#
#   OUTPUTS_DIR/versions/20260102T030000Z/{cache.zarr,run,predictions,report,update.log}
#   OUTPUTS_DIR/current -> versions/20260102T030000Z
#
# Steps, with the live version (if any) as PREV:
#   1. pipeline encode GRAPH_DIR --out NEW/cache.zarr --reuse PREV/cache.zarr   (only new or edited texts run the LLM)
#   2. pipeline train NEW/cache.zarr --out NEW/run --init PREV/run               (warm start; RETRAIN=1: from scratch)
#   3. pipeline infer --checkpoint NEW/run --out NEW/predictions --new-only PREV/cache.zarr
#      (the nodes PREV did not have; the first version predicts every node)
#   4. pipeline report NEW --out NEW/report
#   5. `current` -> NEW, by renaming a fresh link over it (atomic: readers see PREV or NEW)
# A night with no new node writes an empty predictions file and goes live like any other (its
# edits and removals are in the new cache and run). A failing step stops the update with a
# message naming it and its exit status (2: bad input, e.g. settings that differ from PREV's;
# 1: failure while running); `current` still names PREV, which is untouched, and what the night
# wrote is deleted except its log, kept as versions/STAMP.failed/update.log.
# Exit status: 0 updated; the failing step's status otherwise; 2 for a problem the script finds
# itself (arguments, VERSION, a `current` that does not name a version); 3: another update is running.
#
# Variables: ENCODE_FLAGS, TRAIN_FLAGS, INFER_FLAGS (extra flags of each step, e.g.
# ENCODE_FLAGS="--max-length 32"; keep ENCODE_FLAGS and the training architecture the same
# from night to night, or the reuse and the warm start are refused), RETRAIN=1 (train from
# scratch instead of warm-starting), PIPELINE (the command; default: `python -m pipeline` of
# this repository's .venv), VERSION (the new version's name; default: UTC time stamp).
# Crontab example (03:00 every night):
#   0 3 * * * cd /srv/engine && ENCODE_FLAGS="--max-length 32" bash scripts/cron_update.sh /data/papers /srv/outputs >> /srv/outputs/cron.log 2>&1
set -euo pipefail

die() {
    echo "cron_update: $*" >&2
    exit "${status:-1}"
}

[[ $# -eq 2 ]] || { status=2; die "usage: bash scripts/cron_update.sh GRAPH_DIR OUTPUTS_DIR"; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -d $1 ]] || { status=2; die "GRAPH_DIR $1: no such folder"; }
GRAPH=$(cd "$1" && pwd)
[[ ! -e $2 || -d $2 ]] || { status=2; die "OUTPUTS_DIR $2: exists and is not a folder"; }
mkdir -p "$2/versions" 2>/dev/null || { status=2; die "OUTPUTS_DIR $2: cannot create $2/versions (permissions?)"; }
OUT=$(cd "$2" && pwd)
read -r -a PIPELINE_CMD <<< "${PIPELINE:-$REPO/.venv/bin/python -m pipeline}"
read -r -a ENCODE <<< "${ENCODE_FLAGS:-}"
read -r -a TRAIN <<< "${TRAIN_FLAGS:-}"
read -r -a INFER <<< "${INFER_FLAGS:-}"

exec 9> "$OUT/.update.lock"
flock -n 9 || { status=3; die "another update of $OUT is running (lock $OUT/.update.lock); nothing changed"; }

STAMP=${VERSION:-$(date -u +%Y%m%dT%H%M%SZ)}
[[ $STAMP =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ && $STAMP != *.failed ]] || {
    status=2; die "VERSION '$STAMP': a version name is one folder name of letters, digits, '.', '_' and '-' (no '/', not ending in .failed); nothing changed"; }
NEW="$OUT/versions/$STAMP"
[[ ! -e $NEW ]] || { status=2; die "version $NEW exists already; nothing changed"; }
[[ ! -e $NEW.failed ]] || { status=2; die "version $STAMP failed before ($NEW.failed); give another VERSION or remove that folder; nothing changed"; }
PREV=""
if [[ -L $OUT/current ]]; then
    target=$(readlink "$OUT/current")
    [[ -d $OUT/current ]] || { status=2; die "$OUT/current -> $target: no such version (dangling link); point it at a good one (ln -sfn versions/NAME $OUT/current) or remove it to start afresh; nothing changed"; }
    PREV=$(cd "$OUT/current" && pwd -P)
    for need in cache.zarr run; do
        [[ -d $PREV/$need ]] || { status=2; die "$OUT/current -> $target: has no $need (not a version this script made); nothing changed"; }
    done
elif [[ -e $OUT/current ]]; then
    status=2; die "$OUT/current: not a link to a version (this script keeps a symbolic link there); nothing changed"
fi
mkdir "$NEW"
LOG="$NEW/update.log"
echo "cron_update: $GRAPH -> $NEW (previous: ${PREV:-none})" | tee "$LOG" >&2

# discard_night: delete what this night wrote except its log, kept as NEW.failed/update.log
# (every command writes only under NEW; the previous version is never touched).
discard_night() {
    find "$NEW" -mindepth 1 -maxdepth 1 ! -name update.log -exec rm -rf -- {} +
    mv -T "$NEW" "$NEW.failed"
}

# step NAME CMD...: run from the repository root, log to update.log and stderr; on failure
# keep `current` as it is and stop with the step's status.
step() {
    local name=$1
    shift
    echo "cron_update: [$name] $*" | tee -a "$LOG" >&2
    local rc=0
    (cd "$REPO" && "$@") 2>&1 | tee -a "$LOG" >&2 || rc=${PIPESTATUS[0]}
    if [[ $rc -ne 0 ]]; then
        discard_night
        status=$rc
        die "step '$name' failed (exit $rc); ${PREV:+$PREV stays live (current), }nothing switched. Log: $NEW.failed/update.log"
    fi
}

if [[ -n $PREV ]]; then
    step encode "${PIPELINE_CMD[@]}" encode "$GRAPH" --out "$NEW/cache.zarr" --reuse "$PREV/cache.zarr" "${ENCODE[@]}"
    init=(--init "$PREV/run")
    [[ ${RETRAIN:-0} == 1 ]] && init=()
    step train "${PIPELINE_CMD[@]}" train "$NEW/cache.zarr" --out "$NEW/run" "${init[@]}" "${TRAIN[@]}"
    step infer "${PIPELINE_CMD[@]}" infer --checkpoint "$NEW/run" --out "$NEW/predictions" --new-only "$PREV/cache.zarr" "${INFER[@]}"
else
    step encode "${PIPELINE_CMD[@]}" encode "$GRAPH" --out "$NEW/cache.zarr" "${ENCODE[@]}"
    step train "${PIPELINE_CMD[@]}" train "$NEW/cache.zarr" --out "$NEW/run" "${TRAIN[@]}"
    step infer "${PIPELINE_CMD[@]}" infer --checkpoint "$NEW/run" --out "$NEW/predictions" --split all "${INFER[@]}"
fi
step report "${PIPELINE_CMD[@]}" report "$NEW" --out "$NEW/report"

ln -sfn "versions/$STAMP" "$OUT/.current.tmp" && mv -T "$OUT/.current.tmp" "$OUT/current" || {  # rename(2): atomic
    rm -f "$OUT/.current.tmp"; discard_night; status=1
    die "could not point $OUT/current at versions/$STAMP; ${PREV:+$PREV stays live (current), }nothing switched. Log: $NEW.failed/update.log"; }
echo "cron_update: $OUT/current -> versions/$STAMP" | tee -a "$LOG" >&2
