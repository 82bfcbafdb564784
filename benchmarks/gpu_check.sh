#!/usr/bin/env bash
# The one script to run on a borrowed GPU machine, from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# It needs the wheels in .whl/ (lark, betty-ml 0.2.1; pure Python, downloaded beforehand,
# carried with the working tree) and a python3 with torch (CUDA build), numpy, networkx, rich,
# pytest, scikit-learn. Steps, each under its own time limit, all inside one overall budget
# (GPU_CHECK_BUDGET seconds, default 465) so that the whole script ends within 8 minutes even
# when something hangs; a failing step is recorded and the next one runs:
#
#   1. install the wheels into /tmp/site (no index, no deps) and put it and the repo on PYTHONPATH
#   2. the machine: nvidia-smi -L, Python/torch/CUDA versions, imports, `mlodsl check`
#   3. python3 -m pytest tests/cuda                  -> $OUT/pytest_cuda.txt
#   3b. benchmarks/compiled_cuda.py: the seed's program eager, compiled, compiled with CUDA
#      graphs (issue #11)                            -> $OUT/compiled_cuda.json
#   4. a CPU subset of the suite (GPUs hidden)       -> $OUT/pytest_cpu.txt
#   5. benchmarks/vs_betty.py --device cuda, small   -> $OUT/vs_betty_cuda.json
#   6. benchmarks/hypergrad_cost.py --device cuda    -> $OUT/hypergrad_cost_cuda.json
#   7. if time is left: tests/runtime/hypergrad with CUDA visible (the engine's "auto" device then
#      picks CUDA for tests written for the CPU)     -> $OUT/pytest_auto_cuda.txt
#
# Everything printed also goes to $OUT/gpu_check.log (at most 7 files in $OUT). pytest gets
# no -q of its own: pyproject's addopts already has one (a second hides the summary line).
# GPU_CHECK_DRY=1 runs the same steps on the CPU with tiny settings (the CUDA tests skip):
# a rehearsal of the script's own logic on a machine without a GPU.

set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-465}
START=$(date +%s)
LOG=$OUT/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

if [ "$DRY" = "1" ]; then
    SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site_dry}
    DEVICE=cpu
else
    SITE=${GPU_CHECK_SITE:-/tmp/site}
    DEVICE=cuda
fi

SUMMARY=()

# step NAME CAP_SECONDS COMMAND: run COMMAND (a bash string, pipefail on) under `timeout`,
# limited to CAP seconds and to what is left of the overall budget; record status and time.
step() {
    local name=$1 cap=$2 cmd=$3
    local now left limit t0 rc
    now=$(date +%s)
    left=$((BUDGET - (now - START) - 5))
    limit=$cap
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 15 ]; then
        echo "=== $name: SKIPPED (only ${left}s of the budget left)"
        SUMMARY+=("$name: skipped (budget)")
        return 0
    fi
    echo
    echo "=== $name (limit ${limit}s, $(date +%T), $((now - START))s into the run)"
    echo "+ $cmd"
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -o pipefail -c "$cmd"
    rc=$?
    local took=$(($(date +%s) - t0))
    local what="exit $rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then what="TIMED OUT after ${limit}s"; fi
    echo "=== $name: $what (${took}s)"
    SUMMARY+=("$name: $what (${took}s)")
    return 0
}

echo "gpu_check: $(date -u +%FT%TZ) dry=$DRY device=$DEVICE budget=${BUDGET}s out=$OUT"

# 1. wheels -> $SITE (pure Python, no index, no dependencies; betty-ml declares Python < 3.11,
# which is why --ignore-requires-python is needed; it runs on newer Pythons). If pip is
# missing, unzipping a pure-Python wheel is an install.
step "install wheels" 60 "
ls -l .whl/ &&
mkdir -p '$SITE' &&
( $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --ignore-requires-python --target '$SITE' .whl/*.whl ||
  $PY -c 'import glob, sys, zipfile
for w in glob.glob(\".whl/*.whl\"):
    zipfile.ZipFile(w).extractall(sys.argv[1]); print(\"unzipped\", w)' '$SITE' ) &&
ls '$SITE'"
export PYTHONPATH=$SITE:$ROOT

# 2. the machine
step "machine" 60 "
(command -v nvidia-smi >/dev/null && nvidia-smi -L && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv) || echo 'nvidia-smi: not found'
nproc; (git rev-parse --short HEAD 2>/dev/null || echo 'no git') ; git status --short 2>/dev/null | head -20
$PY - <<'EOF'
import sys, platform
import torch
print('python', sys.version.split()[0], platform.platform())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
      torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
print('cuda available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f'  cuda:{i}', p.name, round(p.total_memory / 2**30, 1), 'GiB', f'sm_{p.major}{p.minor}')
    x = torch.randn(1024, 1024, device='cuda', dtype=torch.float64)
    print('  float64 matmul ok:', bool(torch.isfinite(x @ x).all()))
    print('  tf32 matmul allowed:', torch.backends.cuda.matmul.allow_tf32)
for name in ('numpy', 'networkx', 'rich', 'pytest', 'sklearn', 'lark', 'betty', 'mlodsl'):
    try:
        mod = __import__(name)
        print(f'{name:9s}', getattr(mod, '__version__', '?'), getattr(mod, '__file__', ''))
    except Exception as err:
        print(f'{name:9s} IMPORT FAILED: {type(err).__name__}: {err}')
import betty.engine  # what the Betty side of vs_betty needs
EOF
$PY -m mlodsl check examples/hpo/hpo.mlo && echo 'mlodsl CLI (python -m mlodsl) ok'"

# 3. the CUDA tests (all skipped without CUDA, as in the dry run)
step "pytest tests/cuda" 200 "
$PY -m pytest tests/cuda -rfE --durations=10 -p no:cacheprovider 2>&1 | tee '$OUT/pytest_cuda.txt'"

# 3b. the compiled iteration on the device (issue #11): eager, compiled (inductor's kernels)
# and compiled with CUDA graphs (static batch buffers), taking turns; the compiled sides'
# first turns are their compilations. The dry run rehearses it without compiling.
if [ "$DRY" = "1" ]; then CC="--backend python --rounds 1 --chunk 2"; else
    CC="--rounds 5 --chunk 50"; fi
step "compiled_cuda --device $DEVICE" 150 "
$PY benchmarks/compiled_cuda.py --device $DEVICE $CC --out '$OUT/compiled_cuda.json'"

# 4. a subset of the CPU suite on this machine's Python/torch, GPUs hidden (what it tests
# is the CPU path with this torch version)
if [ "$DRY" = "1" ]; then CPU_TESTS="tests/runtime/hypergrad/test_implicit.py"; else
    CPU_TESTS="tests/runtime/hypergrad tests/runtime/test_precision.py"; fi
step "pytest CPU subset" 60 "
CUDA_VISIBLE_DEVICES= $PY -m pytest $CPU_TESTS -x -p no:cacheprovider 2>&1 | tee '$OUT/pytest_cpu.txt'"

# 5. mlodsl vs Betty on the device: 2 programs x 3 methods x unroll 1, 5; one fresh process
# per side and configuration; the JSON is rewritten after every configuration, so a run cut
# short by its limit keeps what it measured. stdout's one-line JSON copy is left out of the log.
if [ "$DRY" = "1" ]; then
    VB_GRID="--programs hpo --methods darts --unrolls 1 --iters 2 --warmup 1"
else
    VB_GRID="--programs hpo,reweight --methods darts,neumann,cg --unrolls 1,5 --iters 20 --warmup 5"
fi
step "vs_betty --device $DEVICE" 130 "
$PY benchmarks/vs_betty.py --device $DEVICE --betty-python $PY --no-setup $VB_GRID \
    --repeats 1 --threads 1 --no-accuracy --no-passcount --timeout 60 \
    --out '$OUT/vs_betty_cuda.json' | grep -v '^{\"benchmark\"'"

# 6. hypergradient cost and GPU memory: darts, and unroll T = 1, 5, 20 with and without
# segment checkpointing (stdout: only the table; the JSON goes to the file)
if [ "$DRY" = "1" ]; then HC="--only darts,unroll\ T=5,unroll\ T=5\ ckpt --iters 2 --warmup 1 --plain-steps 5"; else
    HC="--only darts,unroll\ T=1,unroll\ T=1\ ckpt,unroll\ T=5,unroll\ T=5\ ckpt,unroll\ T=20,unroll\ T=20\ ckpt --iters 5 --warmup 2 --plain-steps 50"; fi
step "hypergrad_cost --device $DEVICE" 75 "
$PY benchmarks/hypergrad_cost.py --device $DEVICE $HC --timeout 45 \
    --out '$OUT/hypergrad_cost_cuda.json' | sed -n '/^method /,\$p'"

# 7. with whatever time is left: the hypergradient tests with CUDA visible. They do not name
# a device, so the engine's default ("auto") runs them on CUDA; failures here are evidence
# (e.g. tests comparing a CUDA result with a CPU constant), not necessarily bugs.
if [ "$DRY" != "1" ]; then
    step "pytest tests/runtime/hypergrad, auto device (CUDA visible)" 45 "
$PY -m pytest tests/runtime/hypergrad -rfE -p no:cacheprovider --maxfail=5 2>&1 | tail -n 40 | tee '$OUT/pytest_auto_cuda.txt'"
fi

echo
echo "=== summary ($(( $(date +%s) - START ))s in all)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
for f in pytest_cuda.txt pytest_cpu.txt pytest_auto_cuda.txt; do
    [ -f "$OUT/$f" ] && echo "  $f: $(grep -E '(passed|failed|skipped|error)' "$OUT/$f" | tail -n 1)"
done
ls -l "$OUT"
exit 0
