#!/usr/bin/env bash
# Every GPU figure dcac-reid owes, measured in one go on one CUDA GPU, in at most about 8 minutes:
#
#   bench_train_bf16  dcac bench train --device cuda --batch-size 64 --amp bf16   (step times, dcac/baseline, peak memory)
#   bench_train_fp16  the same with --amp fp16
#   bench_eval_cuda   dcac bench eval --device cuda   (our ranking on CUDA; torchreid's reference on the CPU)
#   train_amp_bf16    a 2-epoch demo_dcac training on CUDA in bf16   (mAP / Rank-1, time)
#   torchrun_nccl     the same through torchrun, one process, backend nccl, train.amp auto
#   pytest_cuda       the tests with a CUDA variant (pytest -k cuda: our ranking on CUDA tensors, bench eval's parts)
#
# Every step runs under its own timeout and a total budget (--budget, default 450 s); a step that
# fails or times out is recorded and the next one runs. stdout: one line saying what the machine has,
# then "----- device_check summary (JSON) -----" and the summary (per step: status ok / failed /
# timeout / skipped, seconds, command, log files, the figures read from its output). Step logs and
# outputs go to a fresh temporary folder (printed in the summary as work_dir); where $OUT is set (the
# GPU runner returns what is written there) also device_check.log (all steps' output) and
# device_check.json (the summary) there. Never into the working tree.
#
# Without a CUDA GPU it says so in one line, runs quick CPU-side checks only (the bench-eval plumbing,
# the refusal of --device cuda, and every GPU step's command checked by the parsers that will read
# it), prints the summary with the GPU steps skipped, and exits 0 when those checks pass.
#
# usage: bash scripts/device_check.sh [--dry-run] [--only STEP[,STEP...]] [--budget SECONDS] [--step-timeout SECONDS]
#   --dry-run          print and check the GPU steps' commands, run none of them
#   --only             run only these GPU steps (e.g. to rerun one that failed)
#   --budget           total seconds for the steps (default 450); a step gets at most what is left
#   --step-timeout     one timeout for every step instead of each step's own
# environment: PYTHON (default python3, else python), TMPDIR, OUT, DCAC_CACHE (default: in the work
# folder), DEVICE_CHECK_DCAC / DEVICE_CHECK_TORCHRUN (commands instead of "$PYTHON -m dcac_plugin.cli"
# and "$PYTHON -m torch.distributed.run"), DEVICE_CHECK_ASSUME_GPU=1 (take the GPU path without
# asking torch: for testing this script with stand-in commands).
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
HELPER="$REPO/dcac_plugin/device_check.py"
GPU_STEPS="bench_train_bf16 bench_train_fp16 bench_eval_cuda train_amp_bf16 torchrun_nccl pytest_cuda"

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
BUDGET=450
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
# written NUL-separated (what runs is what `validate` checks), meta as key=value lines.
STEP_COUNT=0
STEP_LIST=()
add_step() {
    local name=$1 kind=$2 gpu=$3 limit=$4 save_dir=$5
    shift 6
    STEP_COUNT=$((STEP_COUNT + 1))
    local dir
    dir=$(printf '%s/%02d_%s' "$STEPS" "$STEP_COUNT" "$name")
    mkdir -p "$dir"
    printf '%s\0' "$@" >"$dir/argv"
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

define_gpu_steps() {
    add_step bench_train_bf16 bench 1 180 "" -- \
        "${DCAC[@]}" bench train --device cuda --batch-size 64 --amp bf16 --steps 10 --warmup 3
    add_step bench_train_fp16 bench 1 180 "" -- \
        "${DCAC[@]}" bench train --device cuda --batch-size 64 --amp fp16 --steps 10 --warmup 3
    add_step bench_eval_cuda bench 1 180 "" -- \
        "${DCAC[@]}" bench eval --device cuda
    add_step train_amp_bf16 train 1 150 "$RUNS/train_amp_bf16" -- \
        "${DCAC[@]}" train --config-file demo_dcac --root "$DATA" \
        train.max_epoch 2 train.amp bf16 use_gpu True data.save_dir "$RUNS/train_amp_bf16"
    add_step torchrun_nccl train 1 150 "$RUNS/torchrun_nccl" -- \
        "${TORCHRUN[@]}" --standalone --nproc_per_node 1 -m dcac_plugin.cli train --config-file demo_dcac \
        --root "$DATA" train.max_epoch 2 train.amp auto use_gpu True train.dist_backend nccl \
        data.save_dir "$RUNS/torchrun_nccl"
    meta_set "${STEP_LIST[-1]}" note "one process: WORLD_SIZE 1, for which the launcher starts no process group, so this checks torchrun's GPU path, not nccl's collectives (those need 2+ GPUs)"
    add_step pytest_cuda pytest 1 120 "" -- \
        "$PYTHON" -m pytest -q -p no:cacheprovider -rA tests/test_evaluation.py tests/test_performance.py \
        tests/test_device_check.py -k cuda
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
    [ -z "$STEP_TIMEOUT" ] || limit=$STEP_TIMEOUT
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
    meta_set "$dir" status "$status"
    meta_set "$dir" rc "$rc"
    meta_set "$dir" seconds "$seconds"
    [ -z "$reason" ] || meta_set "$dir" reason "$reason"
    append_log "$dir"
    progress "$name: $status (exit status $rc, $seconds s)"
}

# ------------------------------------------------------------------ what this machine has
ENV_JSON="$WORK/environment.json"
if [ "${DEVICE_CHECK_ASSUME_GPU:-0}" = 1 ]; then
    printf '{"cuda_available": true, "assumed": "DEVICE_CHECK_ASSUME_GPU=1"}\n' >"$ENV_JSON"
    ENV_LINE="GPU assumed (DEVICE_CHECK_ASSUME_GPU=1), torch not asked"
    HAVE_GPU=1
else
    ENV_LINE=$(timeout --kill-after=10 180 "$PYTHON" "$HELPER" env --out "$ENV_JSON" 2>"$WORK/environment.err")
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

# ------------------------------------------------------------------ carried wheels and dependencies
# The GPU machine cannot reach PyPI and lacks some of our dependencies: scripts/device_wheels.sh
# gathers their wheels into .whl/ where pip works, the device call carries that folder (carry
# [".whl"]), and here they are installed into the work folder, ahead on PYTHONPATH. Then every
# dependency is imported (device_check.py deps) before any GPU step, so that a missing one ends
# the run in one line instead of failing every step. Its seconds count against --budget, which
# bounds the whole run. DEVICE_CHECK_WHEELS names another folder of wheels, and
# DEVICE_CHECK_SKIP_DEPS=1 skips the check (both for testing this script with stand-in commands).
WHEELS_DIR=${DEVICE_CHECK_WHEELS:-$REPO/.whl}
DEPS_LINE=""
install_carried_wheels() {
    local site="$WORK/site" wheels
    wheels=$(compgen -G "$WHEELS_DIR/*.whl") || return 0  # none carried: nothing to install
    mapfile -t wheels <<<"$wheels"
    progress "installing ${#wheels[@]} carried wheels from $WHEELS_DIR into $site"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "${wheels[@]}" >"$WORK/wheels.log" 2>&1; then
        DEPS_LINE="installing the carried wheels failed: $(tail -n 1 "$WORK/wheels.log")"
        return 1
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
check_dependencies() {  # its lines go to stderr: stdout keeps its one line before the summary
    local rc
    progress "importing every dependency (device_check.py deps)"
    timeout --kill-after=10 300 "$PYTHON" "$HELPER" deps --out "$WORK/dependencies.json" >&2 2>"$WORK/dependencies.err"
    rc=$?
    [ "$rc" -ne 0 ] || return 0
    DEPS_LINE=$(tail -n 1 "$WORK/dependencies.err")
    DEPS_LINE=${DEPS_LINE#device_check deps: }
    [ "$rc" -ne 124 ] || DEPS_LINE="the dependency check ran out of time (300 s)"
    [ -n "$DEPS_LINE" ] || DEPS_LINE="the dependency check failed (exit status $rc)"
    return 1
}
skip_gpu_steps_for_dependencies() {
    for dir in "${GPU_STEP_DIRS[@]}"; do
        meta_set "$dir" status skipped
        meta_set "$dir" reason "dependencies: $DEPS_LINE"
    done
}
DEPS_OK=1
if [ "$DRY_RUN" != 1 ] && [ "$HAVE_GPU" = 1 ] && [ "${DEVICE_CHECK_SKIP_DEPS:-0}" != 1 ]; then
    { install_carried_wheels && check_dependencies; } || DEPS_OK=0
fi

define_gpu_steps
GPU_STEP_DIRS=("${STEP_LIST[@]}")
EXIT=0
NOTE=""
if [ "$DEPS_OK" = 0 ]; then
    MODE=gpu
    echo "device_check: $ENV_LINE: no GPU step run: $DEPS_LINE"
    skip_gpu_steps_for_dependencies
    NOTE=$DEPS_LINE
    EXIT=1
elif [ "$DRY_RUN" = 1 ]; then
    MODE=dry-run
    echo "device_check: dry run: the GPU steps' commands, printed and checked, none run ($ENV_LINE)"
    for dir in "${GPU_STEP_DIRS[@]}"; do
        echo "  $(meta_get "$dir" name) (timeout $(meta_get "$dir" timeout_s) s): $(quoted "$dir")"
        meta_set "$dir" status dry-run
    done
    STEP_LIST=()
    add_step gpu_commands_parse validate 0 240 "" -- "$PYTHON" "$HELPER" validate "$STEPS"
    run_step "${STEP_LIST[0]}"
    [ "$(meta_get "${STEP_LIST[0]}" status)" = ok ] || EXIT=1
elif [ "$HAVE_GPU" = 1 ]; then
    MODE=gpu
    echo "device_check: $ENV_LINE: running the GPU steps ($([ -n "$ONLY" ] && echo "only $ONLY" || echo "$GPU_STEPS")) within ${BUDGET} s"
    for dir in "${GPU_STEP_DIRS[@]}"; do
        name=$(meta_get "$dir" name)
        if [ -n "$ONLY" ] && case " $ONLY " in *" $name "*) false ;; *) true ;; esac; then
            meta_set "$dir" status skipped
            meta_set "$dir" reason "not in --only"
            continue
        fi
        run_step "$dir"
        case "$(meta_get "$dir" status)" in ok | skipped) ;; *) EXIT=1 ;; esac
    done
else
    MODE=cpu
    echo "device_check: no CUDA GPU here ($ENV_LINE): GPU steps skipped, CPU-side checks only"
    for dir in "${GPU_STEP_DIRS[@]}"; do
        meta_set "$dir" status skipped
        meta_set "$dir" reason "no CUDA GPU: $ENV_LINE"
    done
    STEP_LIST=()
    define_cpu_steps
    for dir in "${STEP_LIST[@]}"; do
        run_step "$dir"
        case "$(meta_get "$dir" status)" in ok | skipped) ;; *) EXIT=1 ;; esac
    done
fi
if [ -n "$INTERRUPTED" ]; then
    EXIT=$([ "$INTERRUPTED" = INT ] && echo 130 || echo 143)
    NOTE="interrupted by SIG$INTERRUPTED"
fi

# ------------------------------------------------------------------ summary
echo "----- device_check summary (JSON) -----"
if ! timeout --kill-after=10 120 "$PYTHON" "$HELPER" summary --work "$WORK" --mode "$MODE" --budget "$BUDGET" \
    --elapsed "$(elapsed)" --log-dir "$LOG_DIR" --env "$ENV_JSON" --exit-status "$EXIT" --note "$NOTE" \
    --json-out "$LOG_DIR/device_check.json" 2>"$WORK/summary.err"; then
    # The helper failed: the statuses alone, from the step folders, so that the run still reports.
    {
        printf '{"device_check": "scripts/device_check.sh", "mode": "%s", "exit_status": %s, ' "$MODE" "$EXIT"
        printf '"summary_error": "the summary helper failed, see %s", "steps": {' "$WORK/summary.err"
        sep=""
        for dir in "$STEPS"/*/; do
            printf '%s"%s": {"status": "%s", "rc": "%s", "seconds": "%s"}' "$sep" "$(meta_get "$dir" name)" \
                "$(meta_get "$dir" status)" "$(meta_get "$dir" rc)" "$(meta_get "$dir" seconds)"
            sep=", "
        done
        printf '}, "work_dir": "%s"}\n' "$WORK"
    } | tee "$LOG_DIR/device_check.json"
fi
exit "$EXIT"
