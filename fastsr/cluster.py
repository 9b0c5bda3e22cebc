"""The `accelerate launch` command for this node of a cluster job (used by launch.sh).

    python -m fastsr.cluster [--nodes N] [--node-rank R] [--head HOST] [--port P]
                             [--procs-per-node G] RECIPE [key=value ...]

Under SLURM (SLURM_JOB_ID set) the topology comes from SLURM's variables: the node count
(SLURM_JOB_NUM_NODES / SLURM_NNODES), this node's rank (SLURM_NODEID), the head node (the first host
of SLURM_JOB_NODELIST) and the GPUs of this node (SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE, or the GPUs
torch sees). Elsewhere from the arguments, or from NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT /
PROCS_PER_NODE. Arguments win over both. One process per GPU; on a machine without a GPU, one
process per node unless --procs-per-node says otherwise (gloo). Prints this node's rank, then the command,
NUL-separated: launch.sh labels its output with the rank the command carries.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = 29500


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list (`gpu[07-09,12],login1`) as host names, in order."""
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            first, _, last = item.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}{suffix}")
    return hosts


def _gpus_from_slurm(env: Mapping[str, str]) -> int | None:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key)
        if value:  # "4", or "h100:4"
            return int(value.split(":")[-1].split("(")[0])
    return None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def topology(args: argparse.Namespace, env: Mapping[str, str]) -> dict:
    """nodes, node_rank, head, port and procs_per_node for this node (see the module docstring)."""
    slurm = "SLURM_JOB_ID" in env
    if slurm:
        nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
        node_rank = int(env.get("SLURM_NODEID", 0))
        hosts = expand_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
        head = hosts[0] if hosts else "127.0.0.1"
        gpus = _gpus_from_slurm(env)
    else:
        nodes = int(env.get("NNODES", 1))
        node_rank = int(env.get("NODE_RANK", 0))
        head = env.get("MASTER_ADDR", "127.0.0.1")
        gpus = int(env["PROCS_PER_NODE"]) if env.get("PROCS_PER_NODE") else None
    if gpus is None:
        gpus = _local_gpus()
    procs = args.procs_per_node or gpus or 1
    out = {"nodes": args.nodes or nodes, "node_rank": node_rank if args.node_rank is None else args.node_rank,
           "head": args.head or head, "port": args.port or int(env.get("MASTER_PORT", DEFAULT_PORT)),
           "procs_per_node": procs, "gpu": bool(gpus)}
    if not 0 <= out["node_rank"] < out["nodes"]:
        raise SystemExit(f"launch: node rank {out['node_rank']} is outside {out['nodes']} node(s); "
                         "check --node-rank / NODE_RANK / SLURM_NODEID")
    return out


def launch_command(args: argparse.Namespace, t: dict) -> list[str]:
    """The `accelerate launch` command for this node, of topology `t` (`topology`)."""
    total = t["nodes"] * t["procs_per_node"]
    cmd = ["accelerate", "launch"]
    if total > 1:
        # --multi_gpu selects torch.distributed's launcher; without a GPU the trainer uses gloo.
        cmd += ["--multi_gpu", "--num_machines", str(t["nodes"]), "--machine_rank", str(t["node_rank"]),
                "--main_process_ip", t["head"], "--main_process_port", str(t["port"])]
    cmd += ["--num_processes", str(total)]
    if not t["gpu"] and total == 1:
        cmd += ["--cpu"]
    return [*cmd, str(Path(__file__).with_name("train.py")), args.recipe, *args.overrides]


def parse(argv: list[str]) -> argparse.Namespace:
    """launch.sh's arguments; a topology option left out is None, to be filled by `topology` from the
    environment."""
    ap = argparse.ArgumentParser(prog="launch.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, help="machines in the job")
    ap.add_argument("--node-rank", type=int, help="this machine's rank, 0 .. nodes-1")
    ap.add_argument("--head", help="address of the rank-0 machine")
    ap.add_argument("--port", type=int, help=f"rendezvous port on the head (default {DEFAULT_PORT})")
    ap.add_argument("--procs-per-node", type=int, help="processes per machine (default: its GPUs, or 1)")
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    return ap.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    this_node = topology(arguments, os.environ)
    sys.stdout.write("\0".join([str(this_node["node_rank"]), *launch_command(arguments, this_node)]) + "\0")
