#!/usr/bin/env bash
# The checks that need a GPU, in one go (each appends its table to benchmarks/RESULTS.md):
# the DALI pipeline with GPU operators and the device backend on CUDA tensors, each against imresize
# and the torch loader, then data, training and scaling throughput. Usage: bash benchmarks/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
python -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'; print(torch.cuda.get_device_name())"
python -m pytest -q tests/test_dali.py tests/test_device_loader.py -k cuda
python benchmarks/data_throughput.py $quick
python benchmarks/train_throughput.py $quick
python benchmarks/scaling.py
