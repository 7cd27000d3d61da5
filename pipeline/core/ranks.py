"""Which process of a multi-process (DDP) run this one is, whether torchrun or SLURM started it.

torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT. A SLURM job with N
tasks (hydra's submitit launcher with ``tasks_per_node`` > 1, or ``srun``) exports SLURM_PROCID,
SLURM_LOCALID, SLURM_NTASKS and the node list instead: :func:`adopt_slurm_env` translates them
once, so everything downstream (the training loop's process group, the context's GPU choice,
"only rank 0 records") reads the one torchrun convention.
"""

from __future__ import annotations

import os
import re
import subprocess


def process_rank() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this process; (0, 0, 1) when not distributed."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-004,010],cpu1' -> 'gpu003' (what
    ``scontrol show hostnames`` prints first, used when scontrol is not on the PATH)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def master_address(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return first_host(nodelist)


def adopt_slurm_env(env: dict[str, str] | None = None) -> bool:
    """Under a multi-task SLURM job that torchrun did not start, set the torchrun variables from
    SLURM's. Returns True when it did. The port is derived from the job id, so every task of
    the job agrees on it without talking."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env.setdefault("MASTER_ADDR", master_address(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost"))))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    return True
