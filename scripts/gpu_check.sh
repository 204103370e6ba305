#!/usr/bin/env bash
# GPU check on one H100/H200 whose Python has torch (>= 2.11), lightning and transformers but no package index:
# installs the project's other dependencies from a folder of wheels, then runs scripts/gpu_check.py: a few bf16
# training steps of the base model with FlexAttention, plain and under DeepSpeed ZeRO-2, printing tokens/s, peak
# memory and MFU against ~990 TFLOP/s dense bf16.
#
#   1. where there is an index (and this repository), gather what the GPU machine lacks (~30 MB):
#        scripts/gpu_check.sh --prepare gpu_check_data [--python 3.12]
#      (the wheels for that Python, DeepSpeed built as a wheel, and a small synthetic cohort's shards)
#   2. on the GPU machine, from the repository root, with gpu_check_data/ beside it:
#        scripts/gpu_check.sh [gpu_check_data] [--steps 10 ...]      # extra flags go to gpu_check.py
#
# Environment: PYTHON (default python3), OUT (if set, figures are written to $OUT/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# what the GPU machine's Python may lack: installed from the folder, without an index, only where missing
WHEELS_NEEDED=(deepspeed hjson py-cpuinfo ninja msgpack nvidia-ml-py einops hydra-core omegaconf
  antlr4-python3-runtime==4.9.3 monai webdataset braceexpand peft accelerate torchdata)
# import name of each distribution whose absence the check cannot do without
IMPORTS=(deepspeed hydra omegaconf monai webdataset peft torchdata torchaudio pandas)

pin() {  # the constraints.txt version of a distribution, if pinned
  sed -n "s/^$1==//p" constraints.txt
}

if [[ ${1:-} == --prepare ]]; then
  DIR=${2:?usage: scripts/gpu_check.sh --prepare DIR [--python 3.12]}
  PYV=3.12
  [[ ${3:-} == --python ]] && PYV=${4:?--python needs a version such as 3.12}
  mkdir -p "$DIR/wheels"
  binary=() source=()
  for name in "${WHEELS_NEEDED[@]}"; do
    v=$(pin "$name")
    case $name in
      # source distributions only: built into pure-Python wheels here (DeepSpeed's ops then build just in time)
      deepspeed|antlr4-python3-runtime*) source+=("$name${v:+==$v}") ;;
      *) binary+=("$name${v:+==$v}") ;;
    esac
  done
  "$PYTHON" -m pip wheel -q --no-deps -w "$DIR/wheels" "${source[@]}"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DIR/wheels" "${binary[@]}"
  # torchaudio matching the GPU machine's torch 2.11, and pandas, in case that Python lacks them
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DIR/wheels" "torchaudio==2.11.0" "pandas==$(pin pandas)" python-dateutil six tzdata
  # pydantic (DeepSpeed's configs) with its dependencies: it needs one exact pydantic-core
  "$PYTHON" -m pip download -q --only-binary=:all: --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DIR/wheels" pydantic
  # a small synthetic cohort's shards (all modalities): 24 people, built here with the project installed
  OMNIMODAL_CACHE="$DIR/cache" "$PYTHON" -c "from datamodules.builtin_cohort import demo_shards; print(demo_shards(24, 0))" \
    > "$DIR/shards_path"
  rm -rf "$DIR/shards" && cp -r "$(cat "$DIR/shards_path")" "$DIR/shards" && rm -rf "$DIR/cache" "$DIR/shards_path"
  du -sh "$DIR/wheels" "$DIR/shards"
  exit 0
fi

DATA=gpu_check_data
if [[ $# -gt 0 && ${1:0:1} != - ]]; then DATA=$1; shift; fi
[[ -d $DATA/wheels && -d $DATA/shards ]] || {
  echo "no $DATA/wheels and $DATA/shards: run scripts/gpu_check.sh --prepare $DATA where there is an index" >&2
  exit 2
}

"$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}")
EOF

# install what is missing, from the folder only (no index); the project itself without its dependencies
missing=()
for w in "$DATA"/wheels/*.whl; do
  dist=$(basename "$w" | cut -d- -f1 | tr _ -)
  "$PYTHON" -m pip show -q "$dist" >/dev/null 2>&1 || missing+=("$w")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps "${missing[@]}"
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/dev/null \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # no setuptools there: import from the checkout
for mod in "${IMPORTS[@]}"; do
  "$PYTHON" -c "import $mod" 2>/dev/null || {
    echo "cannot import $mod: add its wheel (and its dependencies') to $DATA/wheels" >&2
    "$PYTHON" -c "import $mod"
  }
done

export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
"$PYTHON" scripts/gpu_check.py --shards "$DATA/shards" --run-dir "${TMPDIR:-/tmp}/omnimodal-gpu-check" \
  ${OUT:+--out "$OUT/gpu_check.json"} "$@"
