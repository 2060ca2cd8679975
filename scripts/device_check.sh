#!/usr/bin/env bash
# Every GPU figure dcac-reid owes, measured in one go on one CUDA GPU, in at most 8 minutes:
#
#   dependencies     dcac_plugin and every dependency imported, their versions and pins (no GPU step runs
#                    if one is missing; the wheels of what the machine lacks travel in .whl/, installed first)
#   bench_train      dcac bench train --device cuda --batch-size 64 --settings fp16:encode fp16:cache bf16:cache
#                    --plan: step times (CUDA events and wall), dcac/baseline, max allocated and reserved
#                    memory beside the `dcac stats` plan; fp16:encode is the paper's Table 6 setting
#   bench_eval_cuda  dcac bench eval --device cuda --no-reference (our ranking on CUDA, checked against ours
#                    on the CPU; no CPU timing of torchreid's reference)
#   train_cuda       a 2-epoch demo_dcac training on the GPU in fp16 with the gradient scaler (mAP, Rank-1)
#   torchrun_ddp     the same in bf16 through torchrun, 2 processes on the one GPU (gloo on CUDA tensors; nccl
#                    refuses two ranks on one GPU), checking that both ranks' PCL memories agree
#   pytest_cuda      the tests with a CUDA variant (pytest -k cuda)
#
# Every step runs under its own timeout and a total budget (--budget, default 480 s, from the script's
# start); the step timeouts add up to less. A step that fails or times out is recorded and the next one
# runs. A GPU step that exits 0 still fails unless its output shows it ran on CUDA (weights on a CUDA
# device, CUDA timings and memory, the precision asked for). stdout: one line saying what the machine
# has, then "----- device_check summary (JSON) -----" and the summary (per step: status ok / failed /
# timeout / skipped, seconds, command, log files, its real error line, the figures read from its
# output). The summary file is rewritten after every step, so a run killed midway still reports. Step
# logs and outputs go to a fresh temporary folder (printed in the summary as work_dir); where $OUT is
# set (the GPU runner returns what is written there) also device_check.log (all steps' output) and
# device_check.json (the summary) there. Never into the working tree.
#
# Without a CUDA GPU it says so in one line, runs quick CPU-side checks only (the dependencies, the
# bench-eval plumbing, the refusal of --device cuda, and every GPU step's command checked by the parsers
# that will read it), prints the summary with the GPU steps skipped, and exits 0 when those checks pass.
#
# usage: bash scripts/device_check.sh [--dry-run] [--only STEP[,STEP...]] [--budget SECONDS] [--step-timeout SECONDS]
#   --dry-run          print and check the GPU steps' commands, run none of them
#   --only             run only these GPU steps (e.g. to rerun one that failed)
#   --budget           total seconds from the start (default 480); a step gets at most what is left
#   --step-timeout     one timeout for every GPU step instead of each step's own
# environment: PYTHON (default python3, else python), TMPDIR, OUT, DCAC_CACHE (default: in the work
# folder), DEVICE_CHECK_WHEELS (default .whl in the checkout: wheels to install first, see
# scripts/device_wheels.sh), DEVICE_CHECK_DCAC / DEVICE_CHECK_TORCHRUN (commands instead of
# "$PYTHON -m dcac_plugin.cli" and "$PYTHON -m torch.distributed.run"), DEVICE_CHECK_ASSUME_GPU=1 (take
# the GPU path without asking torch: for testing this script with stand-in commands).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
HELPER="$REPO/dcac_plugin/benchmarks/device_check.py"
GPU_STEPS="bench_train bench_eval_cuda train_cuda torchrun_ddp pytest_cuda"

usage() {  # the comment block above `set -u`
    sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die_usage() {
    echo "device_check: $1" >&2
    grep -A1 '^# usage:' "${BASH_SOURCE[0]}" | sed 's/^# //;2d' >&2
    exit 2
}

is_count() {
    case "$1" in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac
}

DRY_RUN=0
ONLY=""
BUDGET=480
STEP_TIMEOUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only | --budget | --step-timeout)
            [ $# -ge 2 ] || die_usage "$1 needs a value"
            case "$1" in
                --only) ONLY=$2 ;;
                --budget) BUDGET=$2 ;;
                --step-timeout) STEP_TIMEOUT=$2 ;;
            esac
            shift ;;
        --only=*) ONLY=${1#--only=} ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        --step-timeout=*) STEP_TIMEOUT=${1#--step-timeout=} ;;
        -h | --help) usage; exit 0 ;;
        *) die_usage "unknown argument: $1" ;;
    esac
    shift
done
is_count "$BUDGET" || die_usage "--budget takes whole seconds, got '$BUDGET'"
[ -z "$STEP_TIMEOUT" ] || { is_count "$STEP_TIMEOUT" && [ "$STEP_TIMEOUT" -gt 0 ]; } ||
    die_usage "--step-timeout takes whole seconds (1 or more), got '$STEP_TIMEOUT'"
ONLY=$(printf '%s' "$ONLY" | tr ',' ' ')
for name in $ONLY; do
    case " $GPU_STEPS " in *" $name "*) ;; *) die_usage "--only: unknown step '$name' (steps: $GPU_STEPS)" ;; esac
done
command -v timeout >/dev/null 2>&1 || { echo "device_check: needs the timeout command (GNU coreutils)" >&2; exit 2; }

if [ -z "${PYTHON:-}" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
# This checkout's code, installed or not: the commands run from the repository's root.
if [ -n "${DEVICE_CHECK_DCAC:-}" ]; then DCAC=("$DEVICE_CHECK_DCAC"); else DCAC=("$PYTHON" -m dcac_plugin.cli); fi
if [ -n "${DEVICE_CHECK_TORCHRUN:-}" ]; then TORCHRUN=("$DEVICE_CHECK_TORCHRUN"); else TORCHRUN=("$PYTHON" -m torch.distributed.run); fi

now() {
    if [ -n "${EPOCHREALTIME:-}" ]; then printf '%s\n' "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi
}
START=$(now)
elapsed() {  # seconds since the start, 1 decimal
    awk -v a="$START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'
}
progress() {
    echo "[device_check] $*" >&2
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dcac-device-check.XXXXXX") || { echo "device_check: cannot create a temporary folder" >&2; exit 1; }
WORK=$(cd "$WORK" && pwd)  # absolute: the steps run from the repository's root
STEPS="$WORK/steps"
mkdir -p "$STEPS"
if [ -n "${OUT:-}" ]; then LOG_DIR=$OUT; else LOG_DIR=$WORK; fi
mkdir -p "$LOG_DIR" && LOG_DIR=$(cd "$LOG_DIR" && pwd) || { echo "device_check: cannot write to $LOG_DIR" >&2; exit 1; }
COMBINED="$LOG_DIR/device_check.log"
: >"$COMBINED"
DATA="$WORK/reid-data"
RUNS="$WORK/runs"
export DCAC_CACHE="${DCAC_CACHE:-$WORK/dcac-cache}"
export MPLCONFIGDIR="${MPLCONFIGDIR:-$WORK/matplotlib}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
export TQDM_DISABLE=1
cd "$REPO" || exit 1

# ------------------------------------------------------------------ steps
# add_step NAME KIND GPU(0/1) TIMEOUT SAVE_DIR -- COMMAND...: one folder per step, the command
# written NUL-separated (what runs is what `validate` checks; a word @STEP@ becomes the step's folder,
# where a command may write its figures), meta as key=value lines.
STEP_COUNT=0
STEP_LIST=()
add_step() {
    local name=$1 kind=$2 gpu=$3 limit=$4 save_dir=$5 word
    shift 6
    STEP_COUNT=$((STEP_COUNT + 1))
    local dir
    dir=$(printf '%s/%02d_%s' "$STEPS" "$STEP_COUNT" "$name")
    mkdir -p "$dir"
    for word in "$@"; do printf '%s\0' "${word//@STEP@/$dir}"; done >"$dir/argv"
    printf 'name=%s\nkind=%s\ngpu=%s\ntimeout_s=%s\nsave_dir=%s\n' "$name" "$kind" "$gpu" "$limit" "$save_dir" >"$dir/meta"
    STEP_LIST+=("$dir")
}
meta_set() {  # meta_set DIR KEY VALUE
    printf '%s=%s\n' "$2" "$(printf '%s' "$3" | tr '\n' ' ')" >>"$1/meta"
}
meta_get() {  # meta_get DIR KEY
    sed -n "s/^$2=//p" "$1/meta" | tail -n 1
}
quoted() {  # the command of a step folder, shell-quoted
    local -a argv
    mapfile -d '' -t argv <"$1/argv"
    printf '%q ' "${argv[@]}" | sed 's/ $//'
}

# The step timeouts (with the dependency check's 45 s) add up to 455 s, inside the 480 s budget.
define_gpu_steps() {
    add_step bench_train bench 1 180 "" -- \
        "${DCAC[@]}" bench train --device cuda --batch-size 64 --settings fp16:encode fp16:cache bf16:cache \
        --steps 12 --warmup 4 --plan --json-out @STEP@/figures.json
    add_step bench_eval_cuda bench 1 40 "" -- \
        "${DCAC[@]}" bench eval --device cuda --no-reference
    add_step train_cuda train 1 60 "$RUNS/train_cuda" -- \
        "${DCAC[@]}" train --config-file demo_dcac --root "$DATA" \
        train.max_epoch 2 train.amp fp16 use_gpu True data.save_dir "$RUNS/train_cuda"
    add_step torchrun_ddp train 1 90 "$RUNS/torchrun_ddp" -- \
        "${TORCHRUN[@]}" --standalone --nproc_per_node 2 -m dcac_plugin.cli train --config-file demo_dcac \
        --root "$DATA" train.max_epoch 2 train.amp bf16 use_gpu True train.dist_backend gloo \
        data.save_dir "$RUNS/torchrun_ddp"
    meta_set "${STEP_LIST[-1]}" note "2 processes on one GPU: gloo moves CUDA tensors through the CPU (nccl refuses two ranks on one GPU); DDP, the distributed sampler and the PCL memories' agreement are what it checks"
    add_step pytest_cuda pytest 1 40 "" -- \
        "$PYTHON" -m pytest -q -p no:cacheprovider -rA tests/test_evaluation.py tests/test_device_check.py \
        tests/test_device_steps.py -k cuda
}

define_dependency_step() {
    add_step dependencies deps 0 45 "" -- "$PYTHON" "$HELPER" deps --out @STEP@/dependencies.json
}

define_cpu_steps() {
    add_step bench_eval_cpu_plumbing bench 0 120 "" -- \
        "${DCAC[@]}" bench eval --device cpu --skip-market --skip-msmt
    add_step bench_eval_cuda_refused usage_error 0 120 "" -- \
        "${DCAC[@]}" bench eval --device cuda --skip-market --skip-msmt
    add_step gpu_commands_parse validate 0 240 "" -- \
        "$PYTHON" "$HELPER" validate "$STEPS"
}

# ------------------------------------------------------------------ running a step
CHILD=""
INTERRUPTED=""
on_signal() {
    INTERRUPTED=$1
    if [ -n "$CHILD" ]; then kill -TERM "$CHILD" 2>/dev/null; fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

append_log() {  # the step's output into the combined log
    local dir=$1
    {
        printf '\n===== %s: %s (rc %s, %s s) =====\n$ %s\n' "$(meta_get "$dir" name)" "$(meta_get "$dir" status)" \
            "$(meta_get "$dir" rc)" "$(meta_get "$dir" seconds)" "$(quoted "$dir")"
        echo "----- stdout -----"
        cat "$dir/stdout" 2>/dev/null
        echo "----- stderr -----"
        cat "$dir/stderr" 2>/dev/null
    } >>"$COMBINED"
}

run_step() {
    local dir=$1 name kind limit spent left floor start rc seconds status reason
    name=$(meta_get "$dir" name)
    kind=$(meta_get "$dir" kind)
    limit=$(meta_get "$dir" timeout_s)
    [ -z "$STEP_TIMEOUT" ] || [ "$(meta_get "$dir" gpu)" != 1 ] || limit=$STEP_TIMEOUT
    if [ -n "$INTERRUPTED" ]; then
        meta_set "$dir" status skipped
        meta_set "$dir" reason "interrupted (SIG$INTERRUPTED) before this step"
        return
    fi
    spent=$(elapsed)
    left=$(awk -v b="$BUDGET" -v s="$spent" 'BEGIN { l = int(b - s); print (l > 0 ? l : 0) }')
    floor=$((limit < 20 ? limit : 20))
    if [ "$left" -lt "$floor" ] || [ "$left" -lt 1 ]; then
        meta_set "$dir" status skipped
        meta_set "$dir" reason "time budget spent: ${spent} s of ${BUDGET} s used before this step"
        progress "$name: skipped (time budget: ${spent} s of ${BUDGET} s used)"
        return
    fi
    [ "$limit" -le "$left" ] || limit=$left
    meta_set "$dir" effective_timeout_s "$limit"
    local -a argv
    mapfile -d '' -t argv <"$dir/argv"
    progress "$name: running (timeout ${limit} s): $(quoted "$dir")"
    start=$(now)
    timeout --kill-after=10 "$limit" "${argv[@]}" >"$dir/stdout" 2>"$dir/stderr" </dev/null &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    while [ -n "$INTERRUPTED" ] && kill -0 "$CHILD" 2>/dev/null; do  # a signal ended the wait, not the step
        wait "$CHILD"
        rc=$?
    done
    CHILD=""
    seconds=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    reason=""
    if [ -n "$INTERRUPTED" ]; then
        status=interrupted
        reason="interrupted by SIG$INTERRUPTED"
    elif [ "$kind" = usage_error ]; then
        if [ "$rc" -eq 2 ] && head -n 1 "$dir/stderr" | grep -q '^dcac: error: '; then
            status=ok
        else
            status=failed
            reason="expected exit status 2 and one 'dcac: error: ...' line, got exit status $rc"
        fi
    elif [ "$rc" -eq 0 ]; then
        status=ok
    elif { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } &&
        awk -v s="$seconds" -v l="$limit" 'BEGIN { exit !(s >= l - 1) }'; then
        status=timeout
        reason="no result within ${limit} s"
    else
        status=failed
        [ "$kind" != pytest ] || [ "$rc" -ne 5 ] || reason="pytest selected no test"
    fi
    if [ "$status" = ok ] && [ "$(meta_get "$dir" gpu)" = 1 ] && [ "$MODE" = gpu ]; then
        # Exit status 0 is not enough: the output must show the step ran on CUDA, as asked.
        if ! reason=$(timeout --kill-after=10 60 "$PYTHON" "$HELPER" verify "$dir" 2>&1); then
            status=failed
            reason="not a GPU result: $(printf '%s' "$reason" | tail -n 1)"
        else
            reason=""
        fi
    fi
    meta_set "$dir" status "$status"
    meta_set "$dir" rc "$rc"
    meta_set "$dir" seconds "$seconds"
    [ -z "$reason" ] || meta_set "$dir" reason "$reason"
    append_log "$dir"
    progress "$name: $status (exit status $rc, $seconds s)"
}

# ------------------------------------------------------------------ the summary
write_summary() {  # write_summary [print]: device_check.json rewritten (and printed with "print")
    local target=/dev/null
    [ "${1:-}" != print ] || target=/dev/stdout
    timeout --kill-after=10 120 "$PYTHON" "$HELPER" summary --work "$WORK" --mode "$MODE" --budget "$BUDGET" \
        --elapsed "$(elapsed)" --log-dir "$LOG_DIR" --env "$ENV_JSON" --exit-status "$EXIT" --note "$NOTE" \
        --json-out "$LOG_DIR/device_check.json" >"$target" 2>"$WORK/summary.err"
}

fallback_summary() {  # the statuses alone, from the step folders, where the helper itself failed
    local sep="" dir
    {
        printf '{"device_check": "scripts/device_check.sh", "mode": "%s", "exit_status": %s, ' "$MODE" "$EXIT"
        printf '"summary_error": "the summary helper failed, see %s", "steps": {' "$WORK/summary.err"
        for dir in "$STEPS"/*/; do
            printf '%s"%s": {"status": "%s", "rc": "%s", "seconds": "%s"}' "$sep" "$(meta_get "$dir" name)" \
                "$(meta_get "$dir" status)" "$(meta_get "$dir" rc)" "$(meta_get "$dir" seconds)"
            sep=", "
        done
        printf '}, "work_dir": "%s"}\n' "$WORK"
    } | tee "$LOG_DIR/device_check.json"
}

run_steps() {  # run_steps DIR...: each in turn, the summary file rewritten after each
    local dir
    for dir in "$@"; do
        meta_set "$dir" status running
        write_summary || true
        run_step "$dir"
        case "$(meta_get "$dir" status)" in ok | skipped | dry-run) ;; *) EXIT=1 ;; esac
        write_summary || true
    done
}

skip_steps() {  # skip_steps REASON DIR...
    local reason=$1 dir
    shift
    for dir in "$@"; do
        meta_set "$dir" status skipped
        meta_set "$dir" reason "$reason"
    done
}

# ------------------------------------------------------------------ the carried wheels
# What the GPU machine lacks travels as wheels (scripts/device_wheels.sh fills .whl/); they are
# installed into a folder of the work folder, first on PYTHONPATH, never into the machine's Python.
WHEELS=${DEVICE_CHECK_WHEELS:-$REPO/.whl}
WHEEL_LINE=""
WHEELS_FAILED=0
install_carried_wheels() {
    local -a wheels
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    [ "${#wheels[@]}" -gt 0 ] || return 0
    local site="$WORK/site-packages"
    if timeout --kill-after=10 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" "${wheels[@]}" >"$WORK/wheels.log" 2>&1; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        WHEEL_LINE="${#wheels[@]} carried wheels installed into $site"
    else
        WHEEL_LINE="installing the ${#wheels[@]} carried wheels failed: $(tail -n 1 "$WORK/wheels.log")"
        WHEELS_FAILED=1
    fi
    progress "$WHEEL_LINE"
}

# ------------------------------------------------------------------ what this machine has
ENV_JSON="$WORK/environment.json"
MODE=cpu
EXIT=0
NOTE=""
install_carried_wheels
if [ "${DEVICE_CHECK_ASSUME_GPU:-0}" = 1 ]; then
    printf '{"cuda_available": true, "assumed": "DEVICE_CHECK_ASSUME_GPU=1"}\n' >"$ENV_JSON"
    ENV_LINE="GPU assumed (DEVICE_CHECK_ASSUME_GPU=1), torch not asked"
    HAVE_GPU=1
else
    ENV_LINE=$(timeout --kill-after=10 60 "$PYTHON" "$HELPER" env --out "$ENV_JSON" 2>"$WORK/environment.err")
    ENV_RC=$?
    if [ "$ENV_RC" -eq 0 ]; then
        HAVE_GPU=1
    else
        HAVE_GPU=0
        if [ "$ENV_RC" -ne 3 ]; then
            ENV_LINE="the environment check failed (exit status $ENV_RC): $(tail -n 1 "$WORK/environment.err")"
            printf '{"cuda_available": false, "reason": "environment check failed (exit status %s)"}\n' "$ENV_RC" >"$ENV_JSON"
        fi
    fi
fi
[ -z "$WHEEL_LINE" ] || ENV_LINE="$ENV_LINE; $WHEEL_LINE"

define_dependency_step
DEPENDENCY_STEP=${STEP_LIST[0]}
STEP_LIST=()
define_gpu_steps
GPU_STEP_DIRS=("${STEP_LIST[@]}")
if [ "$DRY_RUN" = 1 ]; then
    MODE=dry-run
    echo "device_check: dry run: the GPU steps' commands, printed and checked, none run ($ENV_LINE)"
    skip_steps "dry run" "$DEPENDENCY_STEP"
    for dir in "${GPU_STEP_DIRS[@]}"; do
        echo "  $(meta_get "$dir" name) (timeout $(meta_get "$dir" timeout_s) s): $(quoted "$dir")"
        meta_set "$dir" status dry-run
    done
    STEP_LIST=()
    add_step gpu_commands_parse validate 0 240 "" -- "$PYTHON" "$HELPER" validate "$STEPS"
    run_steps "${STEP_LIST[@]}"
elif [ "$HAVE_GPU" = 1 ]; then
    MODE=gpu
    echo "device_check: $ENV_LINE: running the GPU steps ($([ -n "$ONLY" ] && echo "only $ONLY" || echo "$GPU_STEPS")) within ${BUDGET} s"
    if [ "$WHEELS_FAILED" = 1 ]; then  # what they carry would be missing: the check would only repeat it
        meta_set "$DEPENDENCY_STEP" status failed
        meta_set "$DEPENDENCY_STEP" reason "$WHEEL_LINE"
        printf '%s\n' "$WHEEL_LINE" >"$DEPENDENCY_STEP/stderr"
        EXIT=1
    else
        run_steps "$DEPENDENCY_STEP"
    fi
    if case "$(meta_get "$DEPENDENCY_STEP" status)" in failed | timeout) true ;; *) false ;; esac; then
        skip_steps "dependencies: $(tail -n 1 "$DEPENDENCY_STEP/stderr" 2>/dev/null)" "${GPU_STEP_DIRS[@]}"
    else
        for dir in "${GPU_STEP_DIRS[@]}"; do
            name=$(meta_get "$dir" name)
            if [ -n "$ONLY" ] && case " $ONLY " in *" $name "*) false ;; *) true ;; esac; then
                skip_steps "not in --only" "$dir"
                continue
            fi
            run_steps "$dir"
        done
    fi
else
    echo "device_check: no CUDA GPU here ($ENV_LINE): GPU steps skipped, CPU-side checks only"
    skip_steps "no CUDA GPU: $ENV_LINE" "${GPU_STEP_DIRS[@]}"
    STEP_LIST=()
    define_cpu_steps
    run_steps "$DEPENDENCY_STEP" "${STEP_LIST[@]}"
fi
if [ -n "$INTERRUPTED" ]; then
    EXIT=$([ "$INTERRUPTED" = INT ] && echo 130 || echo 143)
    NOTE="interrupted by SIG$INTERRUPTED"
fi

echo "----- device_check summary (JSON) -----"
write_summary print || fallback_summary
exit "$EXIT"
