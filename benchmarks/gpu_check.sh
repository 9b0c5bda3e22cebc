#!/usr/bin/env bash
# What only a GPU can show, in two stages, each call ending with every number so far in one table
# (benchmarks/report.py reading the summary; each benchmark also appends its own table to RESULTS.md):
#   stage 1, the GPU machine's own packages only (no DALI, no Kornia), about 4 minutes on one H200: the device
#     backend's CUDA tests (exact against imresize and the torch loader) and its crops/s beside the torch
#     loader's and the reference script approach's; both phases, images/s and MFU at HR 96 and 128, eager, compile +
#     bf16 and CUDA graphs; the loop's host overhead per step; the largest finetune batch that fits.
#   stage 2, only where DALI imports (installed from the wheels carried into .whl/), about 2 minutes: DALI's
#     GPU operators against imresize and the torch loader; DALI's crops/s.
#
#   bash benchmarks/gpu_check.sh [stage1|stage2|both]      # default: both, stage 1 first
#
# Every step is time-boxed; a step stopped or failed is noted and the check goes on (exit 1 at the end).
# The notes under the table say which stages ran, which were skipped and why. The summary lives in /tmp
# ($FASTSR_SUMMARY, default /tmp/fastsr_gpu_summary.jsonl): stage 1 starts it afresh, stage 2 adds to it,
# so on a machine still warm from stage 1's call, stage 2's call prints the table of both.
#
# On the lent GPU machine: no package index, no DALI, no Kornia; one call carries at most 64 MiB of the tree;
# 15 minutes of device time, the machine's start included; a machine idle for 30 s goes back, and what was
# carried to it with it. So:
#   here:       bash benchmarks/gpu_wheels.sh             # .whl/1 ... .whl/5, each under 60 MB, with a manifest
#   call 1:     run("bash benchmarks/gpu_check.sh stage1", timeout_s=330)    # no carry; plus 1-3 min of start
#   calls 2-5, each as soon as the last returns (a warm machine keeps what earlier calls carried):
#               run("true", carry=[".whl/1"], timeout_s=60) ... run("true", carry=[".whl/4"], timeout_s=60)
#   call 6:     run("bash benchmarks/gpu_check.sh stage2", carry=[".whl/5"], timeout_s=240), then give_back()
# At most 3 + 5.5 + 4 x 0.5 + 4 = 14.5 minutes: stage 1's time boxes add up to 285 s, stage 2's to 150 s
# after the wheels' install (not yet timed there; call 6 leaves it 80 s). Where stage 2 names a folder that
# did not arrive whole, carry it again with `true` and rerun stage 2 if time is left. Afterwards
# `rm -rf .whl` here (it is ignored; never commit it).
#
# Without a GPU the same script runs through in a few minutes as a smoke test of itself: stage 1 at the
# benchmarks' smallest settings, saying that its numbers are not GPU numbers, the CUDA-only parts skipped;
# stage 2 wherever DALI imports (its CPU operators). To run it as the GPU machine would, hide packages:
#   FASTSR_HIDE=kornia,nvidia.dali bash benchmarks/gpu_check.sh
# (this script then puts benchmarks/hide/ on PYTHONPATH: its sitecustomize.py refuses those imports in every
# Python process of the check).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
stages=${1:-both}
case $stages in
  stage1 | stage2 | both) ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [stage1|stage2|both]" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 FASTSR_SUMMARY=${FASTSR_SUMMARY:-/tmp/fastsr_gpu_summary.jsonl}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the GPU machine runs the tree as it is, not installed
if [ -n "${FASTSR_HIDE:-}" ]; then
  export PYTHONPATH=$PWD/benchmarks/hide:$PYTHONPATH
  echo "hidden from every Python process of this check: $FASTSR_HIDE"
fi
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
if [ -n "$gpu" ]; then
  echo "GPU: $gpu"
  data_args=(--quick)
  train_args=(--gpu-check)
else
  echo "NO GPU visible to torch: a smoke test of this script; its numbers are not GPU numbers"
  data_args=(--quick --images 2 --seconds 0.5 --no-record)  # the smallest runs that still reach every row
  train_args=(--gpu-check --crops 96 --batch-sizes 2 --steps 1 --no-record)
fi
failed=0

limit() {  # GPU_SECONDS CPU_SECONDS: a step's time box here (the CPU smoke runs on a few shared cores)
  if [ -n "$gpu" ]; then echo "$1"; else echo "$2"; fi
}

note() {  # TEXT: printed now, and under the summary table
  echo "-- $*"
  python3 benchmarks/report.py "$FASTSR_SUMMARY" --note "$*"
}

step() {  # NAME SECONDS COMMAND...: one time-boxed step of $stage
  local name=$1 seconds=$2 rc=0
  shift 2
  echo "== $stage: $name ($((SECONDS - start)) s in, at most $seconds s)"
  timeout "$seconds" "$@" || rc=$?
  if [ "$rc" = 124 ]; then
    note "$stage: $name: stopped at its $seconds s limit (what it measured until then is in the table)"
  elif [ "$rc" != 0 ]; then
    note "$stage: $name: failed (exit $rc): $*"
  fi
  if [ "$rc" != 0 ]; then failed=$((failed + 1)); fi
}

stage1() {
  stage="stage 1"
  local began=$SECONDS
  rm -f "$FASTSR_SUMMARY"
  step "the device backend on CUDA, against imresize and the torch loader (its CUDA tests)" "$(limit 60 120)" \
    python3 -m pytest -q -p no:cacheprovider tests/test_device_loader.py -k "cuda or gpu"
  step "data backends but DALI, crops/s" "$(limit 75 150)" \
    python3 benchmarks/data_throughput.py "${data_args[@]}" --dali skip
  step "training steps, the loop's host overhead, the largest batch" "$(limit 150 400)" \
    python3 benchmarks/train_throughput.py "${train_args[@]}"
  if [ -n "$gpu" ]; then
    note "stage 1 ran on $gpu in $((SECONDS - began)) s"
  else
    note "stage 1 ran WITHOUT A GPU, as a smoke test, in $((SECONDS - began)) s: its numbers are not GPU numbers;" \
      "skipped for want of CUDA: the CUDA tests, the compile + bf16 and CUDA-graph rows, the largest batch"
  fi
}

install_wheels() {  # join the parts carried into .whl/N/, check them against the manifest, install into /tmp/site
  python3 - <<'EOF' || return  # (set -e does not hold inside a function called in a condition)
import sys
from pathlib import Path

listed = {}  # .whl/N/NAME -> size
for manifest in Path(".whl").glob("*/manifest.txt"):
    for line in manifest.read_text().splitlines():
        folder, name, size = line.split()
        listed[Path(".whl", folder, name)] = int(size)
broken = sorted({p.parent.name for p, size in listed.items() if not p.is_file() or p.stat().st_size != size}, key=int)
if broken:
    sys.exit(f"{', '.join(f'.whl/{n}' for n in broken)} did not arrive whole: carry it again, then run stage2")
wheels = {}  # NAME.whl -> its parts, NAME.whl.part-aa, -ab, ... in order (or the whole NAME.whl)
for path in sorted(listed, key=lambda p: p.name):
    wheels.setdefault(path.name.partition(".whl")[0] + ".whl", []).append(path)
Path("/tmp/wheels").mkdir(exist_ok=True)
for name, parts in wheels.items():
    Path("/tmp/wheels", name).write_bytes(b"".join(p.read_bytes() for p in parts))
EOF
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/wheels/*.whl
}

stage2() {
  stage="stage 2"
  local began=$SECONDS out
  if compgen -G ".whl/*/manifest.txt" > /dev/null; then
    echo "== stage 2: joining the carried wheels and installing them into /tmp/site ($((SECONDS - start)) s in)"
    if ! out=$(install_wheels 2>&1); then
      note "stage 2 skipped: the carried wheels did not install: ${out##*$'\n'}"
      return
    fi
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
  if ! out=$(python3 -c "import nvidia.dali; print(nvidia.dali.__version__)" 2>&1); then
    note "stage 2 skipped: DALI does not import here (${out##*$'\n'}); it needs the wheels of" \
      "benchmarks/gpu_wheels.sh, carried as this script's header says"
    return
  fi
  step "DALI's GPU operators against imresize and the torch loader (its CUDA tests)" "$(limit 60 120)" \
    python3 -m pytest -q -p no:cacheprovider tests/test_dali.py -k "cuda or gpu"
  step "DALI's rows, crops/s" "$(limit 90 150)" python3 benchmarks/data_throughput.py "${data_args[@]}" --dali only
  if [ -n "$gpu" ]; then
    note "stage 2 ran on $gpu with DALI $out in $((SECONDS - began)) s"
  else
    note "stage 2 ran WITHOUT A GPU, as a smoke test (DALI $out, its CPU operators), in $((SECONDS - began)) s:" \
      "its numbers are not GPU numbers; DALI's CUDA tests skipped for want of CUDA"
  fi
}

case $stages in
  stage1) stage1 ;;
  stage2) stage2 ;;
  both) stage1; stage2 ;;
esac
echo "== every number so far ($((SECONDS - start)) s), from $FASTSR_SUMMARY"
python3 benchmarks/report.py "$FASTSR_SUMMARY"
case $stages in
  stage1) echo "- stage 2 not run by this call: carry the wheels, then bash benchmarks/gpu_check.sh stage2" ;;
  stage2) grep -q '"note": "stage 1' "$FASTSR_SUMMARY" \
            || echo "- stage 1 has no record in $FASTSR_SUMMARY: not run on this machine (call 1 ran on another?)" ;;
esac
exit $((failed > 0))
