#!/usr/bin/env bash
# Issue 6's GPU measurements, in steps that each fit one 10-minute call of the device tool.
#
#   bash benchmarks/gpu.sh prepare            # HERE: wheels the GPU image lacks, Fashion-MNIST
#   # THERE (device tool, carry [".whl", ".devdata"]), one call per step:
#   bash benchmarks/gpu.sh check              # every CUDA-only test (graph vs eager, no sync, explain maps)
#   bash benchmarks/gpu.sh speed              # benchmarks/speed.py, every case, 4 loader workers
#   bash benchmarks/gpu.sh eager              # the same LeNet cases without CUDA graphs
#   bash benchmarks/gpu.sh study              # lenet-ablation recipe, fused (one worker: runs/s, wall time)
#   bash benchmarks/gpu.sh study-shared       # the same with 4 fusing workers sharing the GPU
#   bash benchmarks/gpu.sh profile            # kernels and host syncs of ten LeNet steps
#
# The GPU image (Python 3.12, its own torch) lacks pydantic, optuna, captum and
# torchinfo; `prepare` downloads them as cp312 wheels into .whl/ (git-ignored),
# and every step there installs them into /tmp/site and runs cnnlab from src/
# (no pip install of cnnlab, so the image's torch is used as it is). Results go
# to $OUT (the device tool's output folder), else ./gpu-results.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?usage: gpu.sh prepare|check|speed|eager|study|study-shared|profile}
OUT=${OUT:-gpu-results}
WHEELS="pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 greenlet
captum==0.9.0 torchinfo==1.8.0"

if [ "$step" = prepare ]; then
  mkdir -p .whl .devdata/fashion-mnist
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$w"
  done
  cp /usr/share/datasets/fashion-mnist/*.gz .devdata/fashion-mnist/
  # CIFAR-10 (19 MB) for the ResNet-18 case; without it speed.py falls back to
  # Fashion-MNIST at 32x32. Wheels + both data sets come to about 59 MB of the 64 MiB carry.
  if [ -f ../shared/data/cifar-10-jpeg.tar.gz ]; then cp ../shared/data/cifar-10-jpeg.tar.gz .devdata/; fi
  du -sh .whl .devdata
  exit 0
fi

mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 CNNLAB_DATA="$PWD/.devdata"
export CNNLAB_CACHE=/tmp/cnnlab-cache MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

case "$step" in
  check)
    # every CUDA-only test (no -x: one call should show every failure)
    python3 -m pytest -q -p no:cacheprovider \
      tests/engine/test_gpu.py tests/data/test_transforms.py \
      tests/explain/test_methods.py::test_cuda_gives_the_cpu_maps 2>&1 | tee "$OUT/check.log" ;;
  speed)
    python3 benchmarks/speed.py --device cuda --workers 4 --out "$OUT/speed" 2>&1 | tee "$OUT/speed.log" ;;
  eager)
    python3 benchmarks/speed.py --device cuda --cases lenet fused-lenet --no-textbook \
      --engine-option train.cuda_graph=false --out "$OUT/eager" 2>&1 | tee "$OUT/eager.log" ;;
  study)
    python3 benchmarks/study_speed.py --device cuda --fuse auto --out "$OUT/study" 2>&1 | tee "$OUT/study.log" ;;
  study-shared)
    python3 benchmarks/study_speed.py --device cuda --fuse auto --workers 4 --out "$OUT/study-shared" 2>&1 \
      | tee "$OUT/study-shared.log" ;;
  profile)
    python3 benchmarks/profile_step.py --device cuda --out "$OUT/profile" 2>&1 | tee "$OUT/profile.log" ;;
  *)
    echo "error: unknown step '$step'; use prepare, check, speed, eager, study, study-shared or profile" >&2; exit 2 ;;
esac
