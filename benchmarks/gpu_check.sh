#!/usr/bin/env bash
# What only a GPU can show, in one go, within about 8 minutes on one H200, ending with every GPU number in one
# table (each benchmark also appends its own table to benchmarks/RESULTS.md):
#   DALI's GPU operators against imresize and the torch loader; crops/s of every data backend; phase A and B
#   images/s and MFU at HR 96 and 128, eager, compile + bf16 and CUDA graphs; the loop's host overhead per
#   step; the largest phase-B batch that fits.
#
# The lent GPU machine has no package index and lacks DALI and Kornia. Before the first call, here:
#   bash benchmarks/gpu_wheels.sh            # .whl/1 ... .whl/N, each under one call's 64 MiB
# then device calls in quick succession (what a call carried stays on a warm machine for ~30 s):
#   run("true", carry=[".whl/1"]) ... run("true", carry=[".whl/N-1"])
#   run("bash benchmarks/gpu_check.sh", carry=[".whl/N"], timeout_s=600)
# This script joins the wheels' parts and installs them into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
export PYTHONUNBUFFERED=1 FASTSR_SUMMARY=${FASTSR_SUMMARY:-/tmp/fastsr_gpu_summary.jsonl}
rm -f "$FASTSR_SUMMARY"

if compgen -G ".whl/*/*" > /dev/null; then
  mkdir -p /tmp/wheels
  for part in .whl/*/*.whl.part-aa; do  # a large wheel came in parts: join them in suffix order
    [ -e "$part" ] || continue
    name=$(basename "${part%.part-aa}")
    for suffix in $(ls .whl/*/"$name".part-* | sed 's/.*\.part-//' | sort); do cat .whl/*/"$name".part-"$suffix"; done \
      > "/tmp/wheels/$name"
  done
  cp .whl/*/*.whl /tmp/wheels/ 2>/dev/null || true
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/wheels/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  echo "installed $(ls /tmp/wheels | wc -l) wheels in $((SECONDS - start)) s"
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU visible to torch'; print(torch.cuda.get_device_name())"
python3 -c "import nvidia.dali, kornia; print('DALI', nvidia.dali.__version__, 'Kornia', kornia.__version__)"

step() {  # a stage that fails is reported and the check goes on to the next
  echo "== $1 ($((SECONDS - start)) s in)"; shift
  "$@" || echo "!! failed (exit $?): $*"
}
step "DALI's GPU operators against imresize and the torch loader" \
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_dali.py tests/test_device_loader.py -k "cuda or gpu"
step "data backends, crops/s" timeout 150 python3 benchmarks/data_throughput.py --quick
step "training steps, loop overhead, largest batch" timeout 300 python3 benchmarks/train_throughput.py --gpu-check
echo "== all GPU numbers ($((SECONDS - start)) s)"
python3 benchmarks/report.py "$FASTSR_SUMMARY"
