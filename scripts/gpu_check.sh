#!/usr/bin/env bash
# The GPU check: everything this repository runs on CUDA, in one command, timed (docs/speed.md).
#
#     bash scripts/gpu_check.sh [FOLDER]      # FOLDER: where the figures go (default: results/bench)
#
# 1. the tests on CUDA: every test of tests/test_devices.py with device=cuda
# 2. python bench.py --device cuda in fp32 and bf16, with the profile      -> FOLDER/bench_gpu.json
# 3. the whole study, timed: train.py (12 runs, 50 epochs), evaluate.py, visualize.py
#                                                            -> FOLDER/gpu_study_results.{json,md}
# 4. where submitit is installed: the same training as 4 local jobs sharing the GPU (train.py --launcher local)
# and a summary of it all (GPU, versions, commit, each step's seconds)   -> FOLDER/gpu_check.json
#
# Needs a CUDA GPU, this repository's requirements, and MNIST in data/MNIST/raw (fetched when there is
# a network; where there is none, the four *-ubyte files, or their .gz in MNIST_GZ_DIR, brought along).
#
# Its own test (tests/test_gpu_check.py) runs it on the CPU, small, through these variables:
# GPU_CHECK_DEVICE (default cuda), GPU_CHECK_TESTS (pytest's -k, default the device), GPU_CHECK_BENCH_FLAGS,
# GPU_CHECK_STUDY_FLAGS and GPU_CHECK_EVALUATE_FLAGS (added to bench.py's, train.py's and evaluate.py's, default
# none) and GPU_CHECK_JOBS (step 4's jobs, default 4; 0 leaves it out). GPU_CHECK_COMMIT names the commit
# where the tree has no .git; PYTHON the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-results/bench}
device=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}  # the interpreter that has the requirements
read -ra bench_flags <<<"${GPU_CHECK_BENCH_FLAGS:-}"
read -ra study_flags <<<"${GPU_CHECK_STUDY_FLAGS:-}"
read -ra evaluate_flags <<<"${GPU_CHECK_EVALUATE_FLAGS:-}"
jobs=${GPU_CHECK_JOBS:-4}
if [[ $device == cuda* ]]; then
    "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: PyTorch sees no CUDA device')"
fi
mkdir -p "$folder"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ -n "${MNIST_GZ_DIR:-}" ]]; then
    mkdir -p data/MNIST/raw
    for gz in "$MNIST_GZ_DIR"/*-ubyte.gz; do gunzip -c "$gz" >"data/MNIST/raw/$(basename "$gz" .gz)"; done
fi
export PYTHONUNBUFFERED=1
declare -A took
failed=()

timed() {  # timed NAME COMMAND...: its output to $work/NAME.log and here, its seconds in took; a failure is noted
    local name=$1 start
    shift
    echo "== $name: $*"
    start=$(date +%s.%N)
    "$@" 2>&1 | tee "$work/$name.log" || failed+=("$name")
    took[$name]=$("$py" -c "print(round($(date +%s.%N) - $start, 1))")
    echo "== $name: ${took[$name]} s"
}

timed tests "$py" -m pytest -q -rs -p no:cacheprovider tests/test_devices.py -k "${GPU_CHECK_TESTS:-$device}"
timed bench "$py" bench.py --device "$device" --profile "${bench_flags[@]}" --json "$folder/bench_gpu.json"
timed train "$py" train.py --device "$device" "${study_flags[@]}" --out "$work/study"
timed evaluate "$py" evaluate.py --device "$device" "${evaluate_flags[@]}" --out "$work/study"
timed visualize "$py" visualize.py --device "$device" --out "$work/study"
cp "$work/study/results.json" "$folder/gpu_study_results.json" || failed+=(results)
cp "$work/study/results.md" "$folder/gpu_study_results.md" || failed+=(results)
if (( jobs > 0 )) && "$py" -c "import submitit" 2>/dev/null; then
    timed "train_${jobs}_jobs" "$py" train.py --device "$device" "${study_flags[@]}" --out "$work/shared" \
        --launcher local --jobs "$jobs"
fi

tests_line=$(grep -E "[0-9]+ (passed|failed)" "$work/tests.log" | tail -1 || true)
TOOK="$(for k in "${!took[@]}"; do echo "$k=${took[$k]}"; done)" TESTS="$tests_line" FAILED="${failed[*]:-}" \
    FOLDER="$folder" DEVICE="$device" STUDY="${study_flags[*]:-}" "$py" - <<'EOF'
import json, os, subprocess, torch
seconds = dict(line.split("=") for line in os.environ["TOOK"].split())
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
summary = {"gpu": gpu, "device": os.environ["DEVICE"], "torch": torch.__version__, "cuda": torch.version.cuda,
           "commit": os.environ.get("GPU_CHECK_COMMIT") or subprocess.run(
               ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
           "tests": os.environ["TESTS"], "failed": os.environ["FAILED"].split(),
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
