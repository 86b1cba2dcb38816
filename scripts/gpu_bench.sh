#!/usr/bin/env bash
# Every GPU figure of issue 14 ("The step at the speed of the hardware"), then the optimizer
# and training tests on the GPU machine, in one run (sized for one H200, ~3 minutes).
#
# Usage, from the repository root:  scripts/gpu_bench.sh [--device cuda] [--tiny]
#   --device DEV   where the benchmarks run (default cuda; cpu to check the script anywhere)
#   --tiny         toy sizes and few repeats (to check the script end to end)
# Environment: PYTHON (default python3); PYTHONPATH may already name extra packages
# (immutables, orjson, pysimdjson); src/ is put in front of it. Nothing is installed.
set -uo pipefail
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and jax share the GPU in one process
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$TINY" = 1 ]; then
  SIZE=tiny; BATCH="16"; SIZES="32 64 64 10"; REPEAT=5; OVERHEAD="--repeat 3 --inner 3"
else
  SIZE=full; BATCH="256 8192"; SIZES="784 1024 1024 10"; REPEAT=30; OVERHEAD="--repeat 20 --inner 10"
fi
FAILED=0
run() {  # run LIMIT COMMAND...: print it, run it with a time limit, report its status
  local limit=$1; shift
  echo; echo "=== $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== exit $rc after $((SECONDS - start)) s"
  [ $rc = 0 ] || FAILED=1
}
TOTAL=$SECONDS
"$PY" - <<'PY'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import jax
    print("jax", jax.__version__, jax.devices())
except Exception as e:
    print("jax unavailable:", e)
PY
# the per-step overhead on the CPU with tiny tensors (runs anywhere)
run 150 "$PY" bench/step_overhead.py $OVERHEAD
# AdamW at GPT-2 small: torch variants, the hardware's bounds, torchlean, jax vs optax
run 240 "$PY" bench/optim_step.py --device "$DEVICE" --size $SIZE --repeat $REPEAT --compile --jax
# the MLP training step, eager and captured, vs nn.Module + fused AdamW (and its CUDA graph)
run 200 "$PY" bench/train_step.py --device "$DEVICE" --batch $BATCH --sizes $SIZES --repeat $REPEAT
# the BatchNorm CNN and the tied GPT-2: the context loops (functional_call, call_module) vs
# the nn.Module loop on the device, then their host overhead on tiny configs (CPU)
run 200 "$PY" bench/train_step.py --models --device "$DEVICE" --repeat $REPEAT
run 150 "$PY" bench/train_step.py --models --host $OVERHEAD
# the tests of the optimizers and the training loop (the captured step on CUDA too)
run 300 "$PY" -m pytest tests/optim tests/train -q -p no:cacheprovider
echo; echo "=== all done in $((SECONDS - TOTAL)) s; failures: $FAILED"
exit $FAILED
