#!/usr/bin/env bash
# GPU check, ready to run the first time a machine with one or more CUDA GPUs is at hand.
# In under 10 minutes (a deadline every step's timeout respects), on synthetic data the
# script makes itself (no network):
#   1. throughput: oneepoch's trainer at a GPT-2-small shape (12 layers, 12 heads, d_model
#      768, seq 1024, vocab 50304, 124M parameters; bf16, eager and compiled) against a plain
#      eager PyTorch GPT in bf16 autocast, in the same run (benchmarks/throughput.py):
#      tokens/s, MFU, speed-up;
#   2. DDP: the same model on 2 GPUs (torchrun) against 1 GPU at the same global batch: the
#      loss trajectories must agree, and the 2-GPU speed-up is printed (skipped, with a
#      note, on one GPU);
#   3. `oneepoch reproduce --preset micro` on the GPU (and with --nproc-per-node 2 on two:
#      every run on two ranks of one torchrun job);
# then a table of every step: what it measured, or what failed and the end of its log.
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same steps on the CPU at tiny sizes
#                                              # (2 gloo processes for step 2): tests the
#                                              # script itself, a few minutes on 2 cores
# Environment: PYTHON (default .venv/bin/python, else python3), DEADLINE_S (570),
# KEEP=1 keeps the work directory with every step's log.
set -u

cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
DEADLINE_S=${DEADLINE_S:-570}

case "${1:-}" in
    --cpu-smoke)
        MODE=cpu-smoke DEVICE=cpu DTYPE=float32 GPUS=0
        SHAPE=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64) SHAPE_BENCH=2,2,64 SEQ=64
        VOCAB=512 BATCH=8 BENCH_STEPS=12 BENCH_WARMUP=4 REPEATS=1 MODES=eager
        DDP_STEPS=30 DDP_EVAL=4096 ;;
    "")
        MODE=gpu DEVICE=cuda DTYPE=bfloat16
        SHAPE=(--n-layer 12 --n-head 12 --d-model 768 --seq-len 1024) SHAPE_BENCH=12,12,768
        SEQ=1024 VOCAB=50304 BATCH=16 BENCH_STEPS=30 BENCH_WARMUP=10 REPEATS=2 MODES=eager,compiled
        DDP_STEPS=60 DDP_EVAL=65536 ;;
    *)
        echo "usage: $0 [--cpu-smoke]" >&2
        exit 2 ;;
esac

started=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/oneepoch-gpu-check.XXXXXX")
cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
ROWS="$WORK/rows.tsv"  # step <TAB> result <TAB> what it measured <TAB> seconds
: >"$ROWS"
FAILED=0

row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }

# step NAME LIMIT_S CMD...: run CMD with its own timeout (never past the deadline), its
# output in $WORK/NAME.log; on failure say what failed and show the end of the log.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE_S - (SECONDS - started)))
    if ((left < 20)); then
        echo "== $name: skipped, the ${DEADLINE_S} s deadline is near"
        row "$name" "skipped" "no time left before the deadline" 0
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most $limit s)"
    local t0=$SECONDS rc
    timeout --signal=TERM --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        echo "   ok in $((SECONDS - t0)) s"
        return 0
    fi
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after $limit s"
    echo "   FAILED ($why): $*"
    tail -n 15 "$WORK/$name.log" | sed 's/^/   | /'
    row "$name" "FAILED" "$why; see the log above" $((SECONDS - t0))
    FAILED=1
    return 1
}

# Facts about the machine
if [[ $MODE == gpu ]]; then
    if ! GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>"$WORK/torch.log"); then
        echo "gpu_check: $PYTHON cannot import torch:"; tail -n 5 "$WORK/torch.log"; exit 1
    fi
    if ((GPUS < 1)); then
        echo "gpu_check: no CUDA GPU visible to torch; run with --cpu-smoke to test the script" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
fi
echo "gpu_check ($MODE): $GPUS GPU(s), python $PYTHON, work in $WORK"

# 0. Data: one corpus at the model's vocabulary, one small one for the reproduce job.
t0=$SECONDS
if step data 120 bash -c "\"$PYTHON\" benchmarks/throughput.py --make-data '$WORK/data' --vocab $VOCAB --tokens 8M &&
    \"$PYTHON\" benchmarks/throughput.py --make-data '$WORK/small' --vocab 1024 --tokens 1M"; then
    row data ok "8M tokens (vocab $VOCAB), 1M tokens (vocab 1024)" $((SECONDS - t0))
else
    echo "gpu_check: without data nothing else can run"
fi

# 1. Throughput and MFU against the plain PyTorch baseline, in the same run.
t0=$SECONDS
if [[ -d "$WORK/data" ]] && step throughput 300 "$PYTHON" benchmarks/throughput.py \
    --device "$DEVICE" --baseline-dtype "$DTYPE" --dtypes "$DTYPE" --modes "$MODES" \
    --shapes "$SHAPE_BENCH" --seq-len "$SEQ" --batch-size "$BATCH" --vocab "$VOCAB" \
    --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --repeats "$REPEATS" --lr 6e-4 \
    --json "$WORK/throughput.json"; then
    what=$("$PYTHON" - "$WORK/throughput.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("; ".join(
    f"{r['impl']} {r['mode']}: {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu']:.1%}"
    + ("" if r["impl"] == "baseline" else f", {r['vs_baseline']:.2f}x")
    for r in rows
))
EOF
)
    row throughput ok "$SHAPE_BENCH seq $SEQ batch $BATCH $DTYPE: $what" $((SECONDS - t0))
fi

# 2. Two GPUs (DDP) against one at the same global batch.
train_args=(--data "$WORK/data" "${SHAPE[@]}" --steps "$DDP_STEPS" --batch-size $((2 * BATCH))
    --lr 6e-4 --warmup-steps 10 --dtype "$DTYPE" --device "$DEVICE" --log-every 5
    --eval-tokens "$DDP_EVAL" --checkpoint-every 100000 --quiet)
if [[ $MODE == gpu ]] && ((GPUS < 2)); then
    echo "== ddp: skipped: one GPU here; the 2-GPU comparison needs two"
    row ddp skipped "one GPU here: the 2-GPU DDP comparison needs two" 0
elif [[ -d "$WORK/data" ]]; then
    t0=$SECONDS
    [[ $MODE == cpu-smoke ]] && export OMP_NUM_THREADS=1  # one core per process
    if step ddp-one 150 "$PYTHON" -m oneepoch train "${train_args[@]}" --out "$WORK/one" &&
        step ddp-two 150 "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 \
            -m oneepoch train "${train_args[@]}" --out "$WORK/two"; then
        if what=$("$PYTHON" - "$WORK/one" "$WORK/two" <<'EOF'
import json, sys
from pathlib import Path

one, two = (Path(p) for p in sys.argv[1:])
read = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
a, b = read(one), read(two)
assert [x["step"] for x in a] == [x["step"] for x in b], "the two runs logged other steps"
worst = max(abs(x["train_loss"] - y["train_loss"]) / y["train_loss"] for x, y in zip(a, b))
info = [json.loads((r / "run.json").read_text()) for r in (one, two)]
assert info[1]["hardware"]["world_size"] == 2
speed = info[1]["tokens_per_s"] / info[0]["tokens_per_s"]
print(f"loss {a[-1]['train_loss']:.4f} vs {b[-1]['train_loss']:.4f} (largest gap {worst:.2%} "
      f"over {len(a)} lines); 2 processes {speed:.2f}x the tokens/s of one")
sys.exit(0 if worst < 0.02 else 3)  # equal up to float (and bf16) reordering
EOF
        ); then
            row ddp ok "$what" $((SECONDS - t0))
        else
            row ddp FAILED "the two trajectories differ: $what" $((SECONDS - t0))
            FAILED=1
        fi
    fi
    unset OMP_NUM_THREADS
fi

# 3. The reproduce job on the device (and on two of them).
micro_row() {  # NAME OUT SECONDS
    local what
    what=$("$PYTHON" - "$2/results.json" <<'EOF'
import collections, json, sys
res = json.load(open(sys.argv[1]))
runs = res["runs"].values()
verdicts = collections.Counter(c["verdict"] for c in res["claims"])
assert all(r["status"] == "completed" for r in runs)
print(f"{len(runs)} runs complete; verdicts: " + ", ".join(f"{n} {v}" for v, n in verdicts.items()))
EOF
    ) && row "$1" ok "$what" "$3" || { row "$1" FAILED "results.json incomplete: $what" "$3"; FAILED=1; }
}
t0=$SECONDS
if [[ -d "$WORK/small" ]] && step reproduce-micro 200 "$PYTHON" -m oneepoch reproduce \
    --preset micro --data "$WORK/small" --out "$WORK/micro" --quiet; then
    micro_row reproduce-micro "$WORK/micro" $((SECONDS - t0))
fi
if { ((GPUS >= 2)) || [[ $MODE == cpu-smoke ]]; } && [[ -d "$WORK/small" ]]; then
    t0=$SECONDS  # on the CPU: two gloo processes, to test this step
    if step reproduce-micro-x2 200 "$PYTHON" -m oneepoch reproduce --preset micro \
        --data "$WORK/small" --out "$WORK/micro2" --quiet --nproc-per-node 2; then
        micro_row reproduce-micro-x2 "$WORK/micro2" $((SECONDS - t0))
    fi
fi

echo
echo "gpu_check ($MODE, $GPUS GPU(s)) in $((SECONDS - started)) s:"
echo "| step | result | measured | s |"
echo "|---|---|---|---|"
while IFS=$'\t' read -r name result what secs; do
    echo "| $name | $result | $what | $secs |"
done <"$ROWS"
exit $FAILED
