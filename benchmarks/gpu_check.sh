#!/usr/bin/env bash
# GPU check: a short bf16 + torch.compile training run of a GPT-2-small-shaped model
# (12 layers, 12 heads, d_model 768, seq 1024, vocab 50304: ~124M parameters) on synthetic
# data the script makes itself (no network), then tokens/s and MFU from the run's run.json.
# About 3 minutes (data ~10 s, compilation ~1 min, 60 s of timed training); hard limit 5.
#
#   bash benchmarks/gpu_check.sh                # one CUDA GPU
#   NPROC=8 bash benchmarks/gpu_check.sh        # torchrun, 8 GPUs (global batch 16 x 8)
#   PARALLEL=fsdp NPROC=8 bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --cpu-smoke    # tiny model on the CPU: same code path, ~1 min
#   NPROC=2 bash benchmarks/gpu_check.sh --cpu-smoke   # ... and under torchrun (gloo)
#
# Environment: PYTHON (default python3), NPROC (1), BATCH (16 sequences per GPU),
# PARALLEL (ddp), TRAIN_TIME (60s), KEEP=1 keeps the work directory.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NPROC=${NPROC:-1}
BATCH=${BATCH:-16}
PARALLEL=${PARALLEL:-ddp}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    MODE=cpu-smoke
    SHAPE=(--n-layer 2 --n-head 2 --d-model 64 --seq-len 64)
    VOCAB=512 TOKENS=4M DEVICE=cpu TRAIN_TIME=${TRAIN_TIME:-20s} EVAL_TOKENS=4096 WARMUP=5
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--cpu-smoke]" >&2
    exit 2
else
    MODE=gpu
    SHAPE=(--n-layer 12 --n-head 12 --d-model 768 --seq-len 1024)
    VOCAB=50304 TOKENS=80M DEVICE=cuda TRAIN_TIME=${TRAIN_TIME:-60s} EVAL_TOKENS=65536 WARMUP=50
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA GPU visible to torch; run with --cpu-smoke to test the path" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/oneepoch-gpu-check.XXXXXX")
cleanup() { [[ "${KEEP:-0}" == 1 ]] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

start=$SECONDS
"$PYTHON" benchmarks/throughput.py --make-data "$WORK/data" --vocab "$VOCAB" --tokens "$TOKENS" >/dev/null
echo "gpu_check: $TOKENS synthetic tokens (vocab $VOCAB) in $((SECONDS - start)) s"

if [[ "$NPROC" -gt 1 ]]; then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m oneepoch)
else
    LAUNCH=("$PYTHON" -m oneepoch)
fi
# The training budget is wall-clock without compilation, evaluation and checkpointing; the
# outer timeout keeps the whole check under 5 minutes whatever happens.
timeout --signal=TERM --kill-after=20 270 "${LAUNCH[@]}" train \
    --data "$WORK/data" --out "$WORK/run" "${SHAPE[@]}" \
    --batch-size $((BATCH * NPROC)) --lr 6e-4 --warmup-steps "$WARMUP" --time "$TRAIN_TIME" \
    --dtype bfloat16 --compile --device "$DEVICE" --parallel "$PARALLEL" \
    --eval-tokens "$EVAL_TOKENS" --log-every 10 --checkpoint-every 1000000 --quiet

"$PYTHON" - "$WORK/run" "$MODE" <<'EOF'
import json
import sys
from pathlib import Path

run, mode = Path(sys.argv[1]), sys.argv[2]
info = json.loads((run / "run.json").read_text())
lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
hw, peak, final = info["hardware"], info["peak_flops"], info["final"]
print(
    f"gpu_check ({mode}): {hw['device_name']} x{hw['world_size']}, {info['dtype']}, "
    f"compile={info['compile']}, {info['params']['total'] / 1e6:.1f}M params\n"
    f"  {info['tokens_per_s']:,.0f} tokens/s, MFU {info['mfu']:.1%} of "
    f"{peak['value'] / 1e12:,.1f} TFLOP/s per device ({peak['source']})\n"
    f"  {final['step']} steps, {final['tokens']:,} tokens in {final['wall_s']:.0f} s; "
    f"loss {lines[0]['train_loss']:.3f} -> {lines[-1]['train_loss']:.3f}, "
    f"val {final['val_loss']:.3f}"
)
ok = info["status"] == "completed" and info["tokens_per_s"] > 0 and 0 < info["mfu"] < 1
ok = ok and lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learned something
sys.exit(0 if ok else 1)
EOF
echo "gpu_check: done in $((SECONDS - start)) s"
