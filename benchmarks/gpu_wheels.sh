#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels the GPU check's stage 2 needs but the lent GPU machine
# lacks (NVIDIA DALI for its CUDA 13 and what DALI needs; fastsr runs without Kornia, so the check does not
# carry it), for that machine's CPython 3.12, into .whl/, and split the large ones into 60 MB parts: one
# device call carries 64 MiB, so the parts go over in several calls (`.whl/1`, `.whl/2`, ...: see
# benchmarks/gpu_check.sh's header). benchmarks/gpu_check.sh joins and installs them.
#
#   bash benchmarks/gpu_wheels.sh            # then: ls .whl/*/  (one folder per call to carry)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .gitignore
rm -rf .whl && mkdir -p .whl/all  # a fresh set: an earlier run's folders would mix two manifests
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# The GPU machine's torch is built for CUDA 13, hence DALI's cuda130 build; its own needs by name, since
# --no-deps fetches none (numpy, packaging and six are there already).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl/all nvidia-dali-cuda130==2.4.0 "nvidia-nvimgcodec-cu13>=0.9,<0.10" nvidia-libnvcomp-cu13==5.3.0.16 \
    nvidia-nvjpeg nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13 "astunparse>=1.6,<=1.6.3" "gast>=0.3.3,<=0.7.0" optree nvtx \
    makefun "libcst~=1.8"
# One folder per device call, each under 60 MB: the parts of large wheels (NAME.whl.part-aa, -ab, ...), small
# wheels packed in beside them.
python3 - <<'EOF'
from pathlib import Path

LIMIT = 60 * 1024 * 1024
pieces = []  # (name, bytes)
for wheel in sorted(Path(".whl/all").glob("*.whl"), key=lambda p: -p.stat().st_size):
    data = wheel.read_bytes()
    if len(data) <= LIMIT:
        pieces.append((wheel.name, data))
    else:
        parts = [data[i:i + LIMIT] for i in range(0, len(data), LIMIT)]
        pieces += [(f"{wheel.name}.part-{chr(97 + k // 26)}{chr(97 + k % 26)}", p) for k, p in enumerate(parts)]
calls: list[list] = []
for name, data in pieces:  # first fit, largest first
    home = next((c for c in calls if sum(len(d) for _, d in c) + len(data) <= LIMIT), None)
    if home is None:
        calls.append(home := [])
    home.append((name, data))
# Every folder also holds the list of all folders' files and sizes, so that gpu_check.sh can name a folder
# that did not arrive whole (carry it again) instead of installing a broken wheel.
manifest = "".join(f"{i} {name} {len(data)}\n" for i, call in enumerate(calls, 1) for name, data in call)
for i, call in enumerate(calls, 1):
    folder = Path(f".whl/{i}")
    folder.mkdir(exist_ok=True)
    for name, data in call:
        (folder / name).write_bytes(data)
    (folder / "manifest.txt").write_text(manifest)
    print(f"{folder}: {sum(len(d) for _, d in call) / 2**20:.0f} MiB, {len(call)} files")
EOF
rm -rf .whl/all
