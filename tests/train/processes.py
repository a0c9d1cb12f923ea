"""Several processes of one run on this machine: CPU devices, connected over loopback only.

`run_processes` starts one command per process, each in its own process group with its output
in a file, waits for all of them up to a deadline and kills whatever is left (on a timeout, a
failure or an interrupted test alike), so that no test leaves processes behind or hangs. Should
the test process itself be killed outright, its children die with it (the driver sets
`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .distributed_driver import PARENT_ENV

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("distributed_driver.py")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Finished:
    """One process: its exit status (negative: the signal that ended it), output, end time."""

    rc: int | None  # None: still running at the deadline, then killed
    output: str
    ended: float  # time.monotonic() when it was seen to end (or was killed)


def child_env(devices_per_process: int) -> dict[str, str]:
    """This environment (the compilation cache of `helpers.compile_cache` included) with
    `devices_per_process` CPU devices and the repository on the path."""
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               **{PARENT_ENV: str(os.getpid())})
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def run_processes(commands: list[list[str]], log_dir: Path, *, timeout: float,
                  devices_per_process: int = 4, envs: list[dict] | None = None
                  ) -> list[Finished]:
    """Run `python DRIVER *command` for each command at once; every process is gone on return.

    `envs[i]`: variables set for process i only. Outputs go to `log_dir/process<i>.log`.
    Processes still running after `timeout` seconds are killed (their `rc` is None)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(devices_per_process)
    procs, logs = [], []
    try:
        for i, command in enumerate(commands):
            log = (log_dir / f"process{i}.log").open("w")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, str(DRIVER), *command], cwd=ROOT,
                                          env={**env, **(envs[i] if envs else {})}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        ended: dict[int, tuple[int | None, float]] = {}
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if i not in ended and p.poll() is not None:
                    ended[i] = (p.returncode, time.monotonic())
            time.sleep(0.1)
        for i in range(len(procs)):
            ended.setdefault(i, (None, time.monotonic()))
    finally:
        for p in procs:
            _kill_group(p)
        for log in logs:
            log.close()
    return [Finished(rc, (log_dir / f"process{i}.log").read_text(errors="replace"), t)
            for i, (rc, t) in sorted(ended.items())]


def _kill_group(p: subprocess.Popen):
    """SIGKILL the process group of `p` (the process and anything it started), then reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def launch_args(port: int, num_processes: int, process_id: int,
                heartbeat_timeout: int = 15) -> list[str]:
    """`python -m train`'s launch options of one process of a run on this machine."""
    return ["--distributed", "--coordinator_address", f"127.0.0.1:{port}",
            "--num_processes", str(num_processes), "--process_id", str(process_id),
            "--heartbeat_timeout", str(heartbeat_timeout), "--init_timeout", "60"]


def launch_env(port: int, num_processes: int, process_id: int) -> dict[str, str]:
    """The same coordinator, process count and id as the environment variables that
    `--distributed` reads when the flags are not given."""
    return {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(process_id)}


def describe(results: list[Finished], tail: int = 3000) -> str:
    """The exit status and output tail of each process, for assertion messages."""
    return "\n".join(f"--- process {i}: rc {r.rc}\n{r.output[-tail:]}"
                     for i, r in enumerate(results))
