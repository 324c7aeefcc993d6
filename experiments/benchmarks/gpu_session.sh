#!/usr/bin/env bash
# Every GPU benchmark of issue 7 in one command, each under its own time limit, so that
# one session on a lent GPU (minutes, all tries counted) measures everything at once.
#
#   bash experiments/benchmarks/gpu_session.sh            # on the GPU machine, repo root
#   bash experiments/benchmarks/gpu_session.sh --tiny     # here, on CPU: tiny sizes, seconds
#
# Logs and JSON go to $OUT (the device tool's return folder) or /tmp/gpu_session, and the
# JSON also to experiments/results/{rnn_speed,cifar10_speedrun,cnn_speed}_<gpu|cpu_tiny>.json.
# Each script writes its JSON after every configuration, so a limit keeps what was measured.
# Limits (seconds) can be set from outside: RNN_S, SPEEDRUN_S, AIRBENCH_S, CNN_S, TESTS_S; a limit of
# 0 skips that step. GA_S (unset: skipped) adds grad_accum.py (config.grad_accum_steps).
# LONG_S (unset: skipped) adds a 16-epoch speedrun, LAYOUT_S (unset:
# skipped) the LSTM residual-layout comparison (lstm_residual_layout.py). AIRBENCH_S (default 0:
# skipped) is the limit of each of three more speedruns: airbench's remaining pieces
# (--airbench) at 10 and at 8 epochs, and airbench94_muon's recipe (--muon).
# Targets 1 and 3 were met on 2026-11-27; a session for target 4 alone:
#   RNN_S=0 CNN_S=0 TESTS_S=0 AIRBENCH_S=120 LONG_S=100 bash experiments/benchmarks/gpu_session.sh
set -u
OUTDIR=${OUT:-/tmp/gpu_session}
mkdir -p "$OUTDIR"
STAMP=$(mktemp)  # results written after it are this session's (the repo holds older ones)
TINY=""
SUF=gpu
if [[ "${1:-}" == "--tiny" ]]; then TINY=--tiny; SUF=cpu_tiny; fi
PY=${PYTHON:-python3}
R=experiments/results
export PYTHONUNBUFFERED=1
# The benchmarks compile the same step more than once (a bare step before and after the
# loop): the persistent cache makes the second one a lookup.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/flaxnets_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# JAX and torch share the GPU in cnn_speed.py and rnn_speed.py: leave torch half of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}

{
  date -u
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  $PY - <<'EOF'
import importlib, jax
print("devices:", jax.devices())
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "grain", "torch", "numpy"):
  try:
    print(f"{m} {importlib.import_module(m).__version__}")
  except Exception as e:  # noqa: BLE001 - a version report, nothing depends on it
    print(f"{m}: {type(e).__name__}: {e}")
EOF
} > "$OUTDIR/env.log" 2>&1
cat "$OUTDIR/env.log"

step() {  # name limit command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if [[ "$limit" == "0" ]]; then echo "=== $name: skipped (limit 0)"; return; fi
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc after $((SECONDS - t0)) s"
  tail -n 25 "$OUTDIR/$name.log"
  # Only $OUTDIR comes back from a lent machine: copy this session's results after each
  # step (not the committed ones: a step that failed before writing would look measured).
  find "$R" -maxdepth 1 -name "*_${SUF}*.json" -newer "$STAMP" -exec cp {} "$OUTDIR/" \;
}

# Target 1: LSTM/GRU layers vs cuDNN, the issue's four shapes, fp32 and bf16, unroll sweep.
step rnn "${RNN_S:-170}" $PY experiments/benchmarks/rnn_speed.py $TINY --unrolls 1 8 16 \
  --rounds 6 --no-autodiff --no-hoist-alt --out "$R/rnn_speed_$SUF.json"
# Target 4: the CIFAR-10 speedrun recipe, 5 timed runs.
RUNS="--runs 5"; [[ -n "$TINY" ]] && RUNS="--runs 2"
step speedrun "${SPEEDRUN_S:-120}" $PY experiments/benchmarks/cifar10_speedrun.py $TINY $RUNS \
  --out "$R/cifar10_speedrun_$SUF.json"
# Target 4, airbench's lookahead EMA, 64x BN-bias lr, dirac and PyTorch init: 10 and 8 epochs.
AB=${AIRBENCH_S-}; [[ -z "$AB" ]] && { [[ -n "$TINY" ]] && AB=240 || AB=0; }  # 0 skips
step speedrun_airbench "$AB" $PY experiments/benchmarks/cifar10_speedrun.py $TINY $RUNS --airbench \
  --out "$R/cifar10_speedrun_airbench_$SUF.json"
if [[ -z "$TINY" ]]; then
  step speedrun_airbench_8ep "$AB" $PY experiments/benchmarks/cifar10_speedrun.py $RUNS --airbench \
    --set num_epochs=8 --out "$R/cifar10_speedrun_airbench_8ep_$SUF.json"
fi
# airbench94_muon's recipe (Muon on the conv filters, batch 2000, 8 epochs).
step speedrun_muon "$AB" $PY experiments/benchmarks/cifar10_speedrun.py $TINY $RUNS --muon \
  --out "$R/cifar10_speedrun_muon_$SUF.json"
# Target 3: ResNet-18 through flaxnets.train vs the bare step vs torch (bf16 first).
if [[ -n "$TINY" ]]; then
  step cnn "${CNN_S:-180}" $PY experiments/benchmarks/cnn_speed.py --tiny --out "$R/cnn_speed_$SUF.json"
else
  step cnn "${CNN_S:-180}" $PY experiments/benchmarks/cnn_speed.py --dtypes bfloat16 float32 \
    --torch-compile-dtypes bfloat16 --steps 30 --repeats 3 --loop-epochs 3 --loop-steps 60 \
    --out "$R/cnn_speed_$SUF.json"
fi
# The recurrent layer equals its references on this backend too (float32 matmuls at full
# precision: the tests' 1e-5 tolerances are not meant for TF32).
JAX_DEFAULT_MATMUL_PRECISION=highest step rnn_tests "${TESTS_S:-50}" $PY -m pytest -x -q -p no:cacheprovider \
  tests/test_recurrent.py
# LSTM residual layout on this device: packed (the GPU default) vs split (the CPU
# default since 2026-11-28), the issue's first shape. LAYOUT_S unset: skipped.
if [[ -n "$TINY" ]]; then
  step lstm_layout "${LAYOUT_S:-60}" $PY experiments/benchmarks/lstm_residual_layout.py --tiny \
    --out "$R/lstm_residual_layout_$SUF.json"
elif [[ -n "${LAYOUT_S:-}" ]]; then
  step lstm_layout "$LAYOUT_S" $PY experiments/benchmarks/lstm_residual_layout.py \
    --shape 128 256 128 512 --rounds 6 --out "$R/lstm_residual_layout_$SUF.json"
fi
# config.grad_accum_steps: the step's temporary memory and time by micro-batches (GA_S unset:
# skipped on the GPU; on accelerators the micro-batches are a lax.scan, not unrolled).
if [[ -n "$TINY" ]]; then
  step grad_accum "${GA_S:-60}" $PY experiments/benchmarks/grad_accum.py --models simple_cnn \
    text_cnn --batch 32 --accum 1 2 --steps 1 --no-cpu-variants --out "$R/grad_accum_$SUF.json"
elif [[ -n "${GA_S:-}" ]]; then
  step grad_accum "$GA_S" $PY experiments/benchmarks/grad_accum.py --models resnet18 resnet20 \
    text_cnn rnn --batch 512 --accum 1 2 4 8 --steps 10 --out "$R/grad_accum_$SUF.json"
fi
# If time is left: the same recipe with 16 epochs (accuracy against training time).
if [[ -z "$TINY" && -n "${LONG_S:-}" ]]; then
  step speedrun16 "$LONG_S" $PY experiments/benchmarks/cifar10_speedrun.py --runs 3 \
    --set num_epochs=16 --out "$R/cifar10_speedrun_${SUF}_16ep.json"
fi
ls -la "$OUTDIR"
