"""Real engines for the tests, started on this machine and stopped after: a one-node SLURM cluster
(Debian's slurm-wlm with munge; slurmctld and slurmd as child processes, configured in a temporary
folder) and a Ray cluster of two nodes (`ray start --head` plus a second `ray start --address`).
Both listen on 127.0.0.1 only. Each skips, saying why, where its engine is not installed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

MUNGE_KEY = Path("/etc/munge/munge.key")
GPUS_PER_NODE = 2  # declared, not real: the scheduler hands them out, which is what the tests check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.3)


SLURM_CONF = """\
ClusterName=graphcap-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
SchedulerParameters=sched_min_interval=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    """slurmctld + slurmd (+ munged) on this machine; yields the environment its clients need."""
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(tool)]
    if missing or not MUNGE_KEY.exists():
        pytest.skip(f"SLURM is not installed ({', '.join(missing) or MUNGE_KEY}): `make cluster-engines` installs it")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root (slurmd launches the jobs)")
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, root=root, ctld_port=_free_port(), slurmd_port=_free_port(),
                                      cpus=os.cpu_count(), gpus=GPUS_PER_NODE))
    for gpu in range(GPUS_PER_NODE):  # stand-in device files (the null device): SLURM binds GPUs by file
        if not (root / f"gpu{gpu}").exists():
            os.mknod(root / f"gpu{gpu}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={root}/gpu[0-{GPUS_PER_NODE - 1}]\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [subprocess.Popen(["munged", "--foreground", "--force", f"--socket={root}/munge.sock",
                                 f"--key-file={MUNGE_KEY}", f"--pid-file={root}/munged.pid",
                                 f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait("munged", lambda: (root / "munge.sock").exists())
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            daemons.append(subprocess.Popen([*daemon, "-f", str(conf)], env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait("the SLURM node", lambda: "idle" in subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout)
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()


@contextmanager
def ray_cluster(cpus_per_node: int | None = None) -> Iterator[dict[str, str]]:
    """A head node and a second node, each declaring one GPU; yields the environment that points
    drivers at it (RAY_ADDRESS) and, under "RAY_WORKER_NODE_PORT", the second node's node-manager
    port, by which a test finds the node to stop."""
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip(f"Ray is not installed next to {sys.executable} (pip install ray)")
    port, worker_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node or os.cpu_count()}", "--num-gpus=1",
              "--object-store-memory=100000000", "--disable-usage-stats"]  # features never go through it
    try:
        subprocess.run([str(ray), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       env=env, check=True,
                       capture_output=True, timeout=120)
        subprocess.run([str(ray), "start", f"--address=127.0.0.1:{port}", f"--node-manager-port={worker_port}",
                        *common], env=env, check=True, capture_output=True, timeout=120)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_WORKER_NODE_PORT": str(worker_port)}
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True, timeout=120)
