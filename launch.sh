#!/usr/bin/env bash
# Launch fastsr training on this node of a (multi-node) job: under SLURM, topology from SLURM's
# variables; elsewhere from the arguments or NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT.
#
#   launch.sh [--dry-run] [--nodes N] [--node-rank R] [--head HOST] [--port P] [--procs-per-node G] \
#             RECIPE [key=value ...]
#
# Prints the accelerate command it runs (--dry-run: prints it and stops). SIGTERM, SIGUSR1 and SIGINT
# (Ctrl-C) are passed on to the training processes, which finish their step, write a checkpoint and
# stop; this script then exits 75 (EX_TEMPFAIL) for SIGTERM/SIGUSR1, so a job script can requeue and
# resume (train.resume=auto), and 130 for Ctrl-C. Any other failure (a lost process, an error) exits
# non-zero with the launcher's code.
set -uo pipefail

dry_run=0
args=()
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry_run=1; else args+=("$arg"); fi
done

python=${PYTHON:-python}
mapfile -d '' cmd < <("$python" -m fastsr.cluster "${args[@]}")
status=$?
if [[ $status -ne 0 || ${#cmd[@]} -lt 2 ]]; then
  echo "launch.sh: could not build the launch command (see above)" >&2
  exit 2
fi
node=${cmd[0]}  # this node's rank, as the command passes it on (--machine_rank)
cmd=("${cmd[@]:1}")
echo "launch.sh (node $node): ${cmd[*]}"
[[ $dry_run -eq 1 ]] && exit 0

# A session of its own, so that a signal sent to this script's process group reaches the
# training processes only through `forward` (torchrun's agent would die on SIGUSR1).
setsid "${cmd[@]}" &
pid=$!
signalled=""
forward() {  # the launcher's children are the training processes
  signalled=$1
  pkill "-$1" -P "$pid" || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT
while true; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done
if [[ -n $signalled && $rc -ne 0 ]]; then
  echo "launch.sh: stopped by SIG$signalled after a checkpoint; resume with train.resume=auto" >&2
  [[ $signalled == INT ]] && exit 130
  exit 75
fi
exit "$rc"
