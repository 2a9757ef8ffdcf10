#!/usr/bin/env bash
# The GPU check: everything this repository runs on CUDA, in one command, timed (docs/speed.md).
#
#     bash scripts/gpu_check.sh [FOLDER [COMMIT]]   # FOLDER: where everything goes (default: results/bench)
#
# 0. what it runs on, printed first: the card, PyTorch's and CUDA's versions, the commit
# 1. the tests on CUDA: every test of tests/test_devices.py with device=cuda
# 2. python bench.py --device cuda in fp32 and bf16, with the profile      -> FOLDER/bench_gpu.json
# 3. the whole study, timed: train.py (12 runs, 50 epochs), evaluate.py, visualize.py
#                                                            -> FOLDER/gpu_study_results.{json,md}
# 4. where submitit is installed: the same training through train.py --launcher local (one job per GPU,
#    its runs one after another in one process), to see what the launcher costs
# and a summary of it all (GPU, versions, commit, each step's seconds, what was skipped and why)
#                                                            -> FOLDER/gpu_check.json
# Every step's output goes to FOLDER/gpu_check.log as well as here: five files in all, none deeper.
#
# It needs no network and no git, so that it runs in one call on a machine lent for it: the commit
# comes from COMMIT or GPU_CHECK_COMMIT ("unknown" without either, where the tree has no .git), and
# MNIST from data/MNIST/raw, or from a folder of its four .gz files named by MNIST_GZ_DIR (docs/speed.md
# shows how to make one, 11 MB). Needs a CUDA GPU and this repository's requirements.
#
# Its own test (tests/test_gpu_check.py) runs it on the CPU, small, through these variables:
# GPU_CHECK_DEVICE (default cuda), GPU_CHECK_TESTS (pytest's -k, default the device), GPU_CHECK_BENCH_FLAGS,
# GPU_CHECK_STUDY_FLAGS and GPU_CHECK_EVALUATE_FLAGS (added to bench.py's, train.py's and evaluate.py's, default
# none) and GPU_CHECK_JOBS (step 4's --jobs, default one per GPU; 0 leaves the step out); PYTHON names the
# interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-results/bench}
commit=${2:-${GPU_CHECK_COMMIT:-}}
if [[ -z $commit ]]; then
    commit=$( { [[ -d .git ]] && git rev-parse HEAD 2>/dev/null; } || echo unknown)
fi
device=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}  # the interpreter that has the requirements
read -ra bench_flags <<<"${GPU_CHECK_BENCH_FLAGS:-}"
read -ra study_flags <<<"${GPU_CHECK_STUDY_FLAGS:-}"
read -ra evaluate_flags <<<"${GPU_CHECK_EVALUATE_FLAGS:-}"
jobs=${GPU_CHECK_JOBS:-}
"$py" - "$device" "$commit" <<'EOF'
import sys, torch
device, commit = sys.argv[1:]
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"gpu_check.sh on {gpu}; PyTorch {torch.__version__}, CUDA {torch.version.cuda}; commit {commit}", flush=True)
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: PyTorch sees no CUDA device")
EOF
mkdir -p "$folder"
log="$folder/gpu_check.log"
: >"$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ -n "${MNIST_GZ_DIR:-}" ]]; then  # the loader decompresses and verifies them (vaestudy/data.py)
    mkdir -p data/MNIST/raw
    cp "$MNIST_GZ_DIR"/*-ubyte.gz data/MNIST/raw/
fi
export PYTHONUNBUFFERED=1
declare -A took
failed=()
skipped=()

timed() {  # timed NAME COMMAND...: its output to the log and here, its seconds in took; a failure is noted
    local name=$1 start
    shift
    echo "== $name: $*" | tee -a "$log"
    start=$(date +%s.%N)
    "$@" 2>&1 | tee "$work/$name.log" | tee -a "$log" || failed+=("$name")
    took[$name]=$("$py" -c "print(round($(date +%s.%N) - $start, 1))")
    echo "== $name: ${took[$name]} s" | tee -a "$log"
}

skip() {  # skip NAME REASON
    skipped+=("$1: $2")
    echo "== $1: skipped: $2" | tee -a "$log"
}

timed tests "$py" -m pytest -q -rs -p no:cacheprovider tests/test_devices.py -k "${GPU_CHECK_TESTS:-$device}"
timed bench "$py" bench.py --device "$device" --profile "${bench_flags[@]}" --json "$folder/bench_gpu.json"
timed train "$py" train.py --device "$device" "${study_flags[@]}" --out "$work/study"
timed evaluate "$py" evaluate.py --device "$device" "${evaluate_flags[@]}" --out "$work/study"
timed visualize "$py" visualize.py --device "$device" --out "$work/study"
cp "$work/study/results.json" "$folder/gpu_study_results.json" || failed+=(results)
cp "$work/study/results.md" "$folder/gpu_study_results.md" || failed+=(results)
if [[ $jobs == 0 ]]; then
    skip train_local_launcher "GPU_CHECK_JOBS=0"
elif ! "$py" -c "import submitit" 2>/dev/null; then
    skip train_local_launcher "submitit is not installed here (pip install -r requirements.txt brings it)"
else
    timed train_local_launcher "$py" train.py --device "$device" "${study_flags[@]}" --out "$work/shared" \
        --launcher local ${jobs:+--jobs "$jobs"}
fi

tests_line=$(grep -E "[0-9]+ (passed|failed)" "$work/tests.log" | tail -1 || true)
TOOK="$(for k in "${!took[@]}"; do echo "$k=${took[$k]}"; done)" TESTS="$tests_line" FAILED="${failed[*]:-}" \
    SKIPPED="$(printf '%s\n' "${skipped[@]:-}")" FOLDER="$folder" DEVICE="$device" COMMIT="$commit" \
    STUDY="${study_flags[*]:-}" "$py" - <<'EOF' | tee -a "$log"
import json, os, torch
seconds = dict(line.split("=") for line in os.environ["TOOK"].split())
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
summary = {"gpu": gpu, "device": os.environ["DEVICE"], "torch": torch.__version__, "cuda": torch.version.cuda,
           "commit": os.environ["COMMIT"], "tests": os.environ["TESTS"], "failed": os.environ["FAILED"].split(),
           "skipped": [line for line in os.environ["SKIPPED"].splitlines() if line],
           "seconds": {k: float(v) for k, v in seconds.items()},
           "study": f"train.py {os.environ['STUDY']}".strip() + ("" if os.environ["STUDY"] else
                    ": the study, both models at latent 2 5 10 20 50 100, 50 epochs, batch 1024 (12 runs)")}
path = os.path.join(os.environ["FOLDER"], "gpu_check.json")
with open(path, "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps(summary, indent=1))
print(f"wrote {path}")
EOF
if (( ${#failed[@]} )); then
    echo "gpu_check.sh: failed: ${failed[*]}" >&2
    exit 1
fi
