"""Several processes, one run: `python -m train --distributed ...` on every host.

Every process runs the same command. `jax.distributed.initialize` connects them through a
coordinator service that process 0 starts at `--coordinator_address`; after it, `jax.devices()`
lists the devices of every process and the ("data", "fsdp") mesh spans them all. What each
process does:

* every process loads only the batch rows of its own devices (`train.sharding.process_rows`)
  of every training and validation batch, runs the compiled steps, and writes its shards of
  each checkpoint (Orbax);
* process 0 also prints the log and writes the run files (config.json, metrics.jsonl, the
  summary and the plot) and each checkpoint's manifest, and checks a checkpoint before a resume
  (moving damaged ones aside) while the others wait for its verdict. The run folder must be on a
  filesystem every process sees.

The launch options come from the flags, else from the environment (`JAX_COORDINATOR_ADDRESS`,
which JAX reads too, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), else from JAX's detection of the
cluster (SLURM, Open MPI, Kubernetes, Cloud TPU). A coordinator on a loopback address (all
processes on one machine) binds only to that address, and the CPU collectives (gloo) connect over
loopback too.

A lost process. JAX's coordination service ends every other process when one stops sending
heartbeats for `--heartbeat_timeout` seconds (or at once when the coordinator itself is gone),
with the line "Terminating process because the JAX distributed service detected fatal errors
... another task died", the lost process's id and SIGABRT (a process waiting in a collective for
the lost one waits until then); a process that exits while others still run waits at most as
long for them. Nothing reported saved is lost: a checkpoint's "saved" line is printed only
after every process has finished it and its manifest is on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import itertools
import os

import jax

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}

LAUNCH_HELP = {
    "distributed": "join a run of several processes (hosts): call jax.distributed.initialize "
                   "first; start the same command on every process",
    "coordinator_address": "HOST:PORT of process 0, where it starts the coordinator service "
                           "(default: $JAX_COORDINATOR_ADDRESS, else the cluster's, detected by "
                           "JAX: SLURM, Open MPI, ...)",
    "num_processes": "processes in the run (default: $JAX_NUM_PROCESSES, else the cluster's)",
    "process_id": "this process, 0 .. num_processes - 1 (default: $JAX_PROCESS_ID, else the "
                  "cluster's)",
    "heartbeat_timeout": "seconds without a heartbeat after which a process counts as lost and "
                         "every other process is stopped; also how long a finished process waits "
                         "for the others",
    "init_timeout": "seconds to wait for every process to join",
}


class LaunchError(ValueError):
    """A bad or missing launch option: one line naming the option."""


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """How this process joins a run. None: from the environment or JAX's cluster detection."""

    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = 100
    init_timeout: int = 300


def add_launch_arguments(parser: argparse.ArgumentParser, dest_prefix: str = ""):
    """The launch flags as an argument group of `parser` (dests `dest_prefix + field`)."""
    group = parser.add_argument_group(
        "several processes (hosts); not saved with the run, give them at every start")
    group.add_argument("--distributed", dest=dest_prefix + "distributed", action="store_true",
                       default=argparse.SUPPRESS, help=LAUNCH_HELP["distributed"])
    for name, metavar, tp in (("coordinator_address", "HOST:PORT", str),
                              ("num_processes", "INT", int), ("process_id", "INT", int),
                              ("heartbeat_timeout", "SECONDS", int),
                              ("init_timeout", "SECONDS", int)):
        text = LAUNCH_HELP[name]
        if name.endswith("timeout"):
            text += f" (default: {getattr(LaunchOptions(), name)})"
        group.add_argument(f"--{name}", dest=dest_prefix + name, type=tp, metavar=metavar,
                           default=argparse.SUPPRESS, help=text)


def launch_options(given: dict) -> LaunchOptions:
    """The launch options from the flags given (`{field: value}`, from the command line), with
    the environment's where a flag is missing. Raises `LaunchError`."""
    given = dict(given)
    if not given.pop("distributed", False):
        if given:
            name = next(iter(given))
            raise LaunchError(f"--{name}: only with --distributed, got --{name} "
                              f"{given[name]} alone")
        count = os.environ.get(ENV["num_processes"], "").strip()
        if count.isdigit() and int(count) > 1:
            # Alone, each of those processes would train the whole run in the same folder.
            raise LaunchError(f"--distributed: missing, but ${ENV['num_processes']} is {count}: "
                              f"pass --distributed to join the run of {count} processes, or "
                              f"unset ${ENV['num_processes']}")
        return LaunchOptions()
    for name, var in ENV.items():
        if name not in given and os.environ.get(var, "").strip():
            text = os.environ[var].strip()
            try:
                given[name] = text if name == "coordinator_address" else int(text)
            except ValueError:
                raise LaunchError(f"--{name}: ${var} must be an integer, got {text!r}") from None
    options = LaunchOptions(distributed=True, **given)
    _check(options)
    return options


def _check(o: LaunchOptions):
    if o.coordinator_address is not None:
        host, sep, port = o.coordinator_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LaunchError(f"--coordinator_address: must be HOST:PORT, got "
                              f"{o.coordinator_address!r}")
    if o.num_processes is not None and o.num_processes < 1:
        raise LaunchError(f"--num_processes: must be >= 1, got {o.num_processes}")
    if o.process_id is not None and o.process_id < 0:
        raise LaunchError(f"--process_id: must be >= 0, got {o.process_id}")
    if None not in (o.num_processes, o.process_id) and o.process_id >= o.num_processes:
        raise LaunchError(f"--process_id: must be < --num_processes {o.num_processes}, got "
                          f"{o.process_id}")
    for name in ("heartbeat_timeout", "init_timeout"):
        if getattr(o, name) < 1:
            raise LaunchError(f"--{name}: must be >= 1, got {getattr(o, name)}")


def is_loopback(address: str) -> bool:
    """Is the host of `HOST:PORT` (`[::1]:PORT` for IPv6) a loopback address?"""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def initialize(o: LaunchOptions):
    """`jax.distributed.initialize` with these options; call before anything touches a device.

    Raises `LaunchError` for a value neither given nor detected, or when this process has
    already used JAX's devices. A coordinator that cannot be reached within `init_timeout`
    seconds ends the process inside JAX (SIGABRT, with JAX's message), like a lost process later
    on."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise LaunchError("--distributed: this process has already used JAX's devices; join the "
                          "run before anything else touches a device (a fresh process)")
    kwargs = dict(coordinator_address=o.coordinator_address, num_processes=o.num_processes,
                  process_id=o.process_id, initialization_timeout=o.init_timeout,
                  heartbeat_timeout_seconds=o.heartbeat_timeout,
                  shutdown_timeout_seconds=o.heartbeat_timeout)
    address = o.coordinator_address or os.environ.get(ENV["coordinator_address"])
    if address and is_loopback(address):
        # Every process is on this machine: nothing needs to listen beyond loopback (JAX's
        # default binds the coordinator to every interface).
        kwargs["coordinator_bind_address"] = address
        _cpu_collectives_over_loopback()
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as exc:  # a value neither given nor detected
        text = " ".join(str(exc).split())
        option = next((name for words, name in _JAX_MISSING.items() if words in text.lower()),
                      "coordinator_address")
        raise LaunchError(f"--{option}: not given and not detected ({text}); give --{option} "
                          f"or ${ENV[option]}, or run under a cluster JAX detects") from None


# Words of jax.distributed.initialize's errors for a missing value, and the option to give.
_JAX_MISSING = {"coordinator_address": "coordinator_address", "number of processes":
                "num_processes", "process id": "process_id"}


def _cpu_collectives_over_loopback():
    """Make the CPU backend's gloo collectives listen and connect on 127.0.0.1.

    By default gloo takes the address the machine's host name resolves to, which need not be
    loopback. jax 0.11 has no option for its address, so this registers the CPU backend factory
    again, with gloo's `hostname` set; it must run before the backends are created. Another
    choice of `jax_cpu_collectives_implementation` (mpi) is left alone."""
    if jax.config.jax_cpu_collectives_implementation != "gloo":
        return
    from jax._src import distributed as jax_distributed
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    def make_cpu_client():
        collectives = _jax.make_gloo_tcp_collectives(
            distributed_client=jax_distributed.global_state.client, hostname="127.0.0.1")
        return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", make_cpu_client, priority=0, fail_quietly=False)


# --------------------------------------------------------------------------------------------
# Roles and synchronisation (no-ops in a run of one process).
#
# These go through JAX's coordination service, not through the devices: they need no compiled
# program, and process 0 may work alone for a long time (hashing a large checkpoint) while the
# others wait.

WAIT_S = 3600  # a lost process stops everything after --heartbeat_timeout long before this
_uses = itertools.count()  # makes every barrier and key unique; the same sequence everywhere


def is_main_process() -> bool:
    """Process 0: the one that logs and writes the run files."""
    return jax.process_index() == 0


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def sync(name: str):
    """Wait until every process has reached the barrier `name` (in the same order everywhere)."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f"jaxla/{next(_uses)}/{name}", WAIT_S * 1000)


def broadcast_from_main(value: int, name: str) -> int:
    """Process 0's `value`, on every process (the others wait for it)."""
    if jax.process_count() == 1:
        return value
    key = f"jaxla/{next(_uses)}/{name}"
    if is_main_process():
        _client().key_value_set(key, str(value))
        return value
    return int(_client().blocking_key_value_get(key, WAIT_S * 1000))
