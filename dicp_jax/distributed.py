"""Multi-process runs: one JAX program over many processes (``jax.distributed``).

Every distributed concern of the library lives here, so the stages stay single-program code:

- ``initialize``: join the processes of a run, from an explicit layout (``--coordinator
  HOST:PORT --num-processes N --process-id I``) or from the cluster (``--coordinator auto``:
  JAX reads SLURM, TPU pod, Open MPI, ... environments itself). A wrong layout is a
  ``ConfigError`` before anything connects; processes that do not all join within the
  timeout end with a one-line message instead of a hang (or of JAX's own abort, which the
  coordination client raises on a failed connect).
- ``global_mesh``: a 1-D mesh over every process's devices, in ``jax.devices()`` order, so
  the layout of a 2 x 2 device run is the layout of one process with 4 devices and the
  results agree.
- ``is_main`` / ``barrier``: process 0 alone writes shared files (tables, plots, metadata,
  ``config.json``, ``metrics.jsonl``); barriers order those writes against the other
  processes' reads.
- ``process_share``, ``to_global``, ``to_host``: host-local <-> global arrays. Every process
  holds the same host copy of small inputs (task parameters, keys); ``to_global`` places on
  each device its slice of it, and ``to_host`` brings a global result back to every
  process as numpy.

Single-process runs never call ``jax.distributed.initialize`` and every helper degrades
to the plain single-process behaviour, so nothing changes for them.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dicp_jax.config import ConfigError

AUTO = "auto"  # --coordinator auto: the cluster environment gives the layout
DEFAULT_TIMEOUT = 120  # seconds for every process to join the coordinator


class DistributedError(RuntimeError):
    """Another process of the run failed or left (the CLI: exit 1, one line)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process sits in a run: the coordinator (process 0's address, or ``auto``),
    how many processes, which one this is; ``timeout``: seconds for all to join."""

    coordinator: str
    num_processes: int | None = None
    process_id: int | None = None
    timeout: int = DEFAULT_TIMEOUT

    @property
    def auto(self) -> bool:
        return self.coordinator == AUTO

    def validate(self) -> None:
        """Refuse an inconsistent layout before anything connects (a ConfigError, exit 2)."""
        if self.timeout < 1:
            raise ConfigError(f"--coordinator-timeout must be >= 1 second, got {self.timeout}")
        if self.auto:
            if self.num_processes is not None or self.process_id is not None:
                raise ConfigError("--coordinator auto takes the layout from the cluster: "
                                  "drop --num-processes and --process-id")
            return
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--coordinator {self.coordinator!r}: expected HOST:PORT "
                              "(process 0's address, the same on every process) or 'auto'")
        if self.num_processes is None or self.process_id is None:
            raise ConfigError("--coordinator needs --num-processes N and --process-id I "
                              "(or --coordinator auto on a cluster)")
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ConfigError(f"--process-id {self.process_id} is out of range for "
                              f"--num-processes {self.num_processes} (0 .. "
                              f"{self.num_processes - 1})")


def layout_from(coordinator: str | None, num_processes: int | None, process_id: int | None,
                timeout: int = DEFAULT_TIMEOUT) -> Layout | None:
    """The checked layout of the command-line flags; None when the run is one process."""
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ConfigError("--num-processes and --process-id need --coordinator HOST:PORT")
        return None
    layout = Layout(coordinator, num_processes, process_id, timeout)
    layout.validate()
    return layout


def _check_port_free(layout: Layout) -> None:
    """Process 0 serves the coordinator on the port: a port in use is a usage error now,
    not a crash inside JAX's service."""
    port = int(layout.coordinator.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            raise ConfigError(f"--coordinator {layout.coordinator}: process 0 cannot serve on "
                              f"port {port} ({e.strerror}); choose a free port") from None


def initialize(layout: Layout, on_timeout: Callable[[str], None]) -> None:
    """Join the run (before any other JAX call touches a device).

    ``on_timeout(message)`` is called from a watchdog thread if the processes have not all
    joined within ``layout.timeout`` seconds; it must end the process (the CLI prints the
    message and exits 1). Why a watchdog: a connect that times out inside JAX's coordination
    client aborts the process with a C++ fatal error, which no ``except`` can turn into a
    message, so ours fires first (JAX's own timeout is set a little later)."""
    import jax

    layout.validate()
    if not layout.auto and layout.process_id == 0:
        _check_port_free(layout)
    # Cross-process collectives of the CPU backend (the default in jax 0.10; set so that a
    # changed default cannot break CPU runs). Accelerators use their own (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if layout.auto:
        what = "the cluster's processes did not all join"
    elif layout.process_id == 0:
        what = (f"only some of the {layout.num_processes} processes joined the coordinator "
                f"{layout.coordinator} (start every process with the same --coordinator and "
                "--num-processes, and a distinct --process-id)")
    else:
        what = (f"process {layout.process_id} could not join the coordinator "
                f"{layout.coordinator} (is process 0 running there, with the same "
                "--num-processes?)")
    timer = threading.Timer(layout.timeout, on_timeout,
                            [f"{what} within {layout.timeout} s (--coordinator-timeout)"])
    timer.daemon = True
    timer.start()
    try:
        if layout.auto:
            jax.distributed.initialize(initialization_timeout=layout.timeout + 30)
        else:
            jax.distributed.initialize(layout.coordinator, layout.num_processes,
                                       layout.process_id,
                                       initialization_timeout=layout.timeout + 30)
    finally:
        timer.cancel()


# -- who am I ---------------------------------------------------------------------------------
def is_multi() -> bool:
    """More than one process in this run (False before, or without, ``initialize``)."""
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_main() -> bool:
    """This process writes the run's shared files (process 0; the only one when single).

    Never initialises a backend in a single-process run (safe at any time)."""
    import jax

    return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (nothing to wait for when single).

    A peer that died or left turns into a ``DistributedError`` (its connection closes, so
    the collective behind the barrier fails at once)."""
    if not is_multi():
        return
    from jax.experimental import multihost_utils

    try:
        multihost_utils.sync_global_devices(name)
    except Exception as e:  # the runtime raises its own error types for a lost peer
        raise DistributedError(f"another process of the run failed or left before "
                               f"{name!r} ({str(e).splitlines()[0][:160]})") from e


# -- devices and arrays -----------------------------------------------------------------------
def global_mesh(axis: str, devices: Sequence[Any] | None = None) -> Any:
    """1-D mesh over ``devices`` (default: every process's devices, ``jax.devices()``
    order: process 0's first), so N processes x k devices lay out like one process with
    N * k devices."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (axis,))


def replicated(mesh: Any = None) -> Any:
    """A sharding that puts a full copy on every device of ``mesh`` (default: global)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(global_mesh("all") if mesh is None else mesh, P())


def process_share(items: Sequence[Any] | np.ndarray) -> Any:
    """This process's contiguous share of ``items``, in proportion to its devices' share
    of all devices (every process computes the same split of the same list, with no
    communication). Single process: all of ``items``."""
    if not is_multi():
        return items
    import jax

    counts = np.bincount([d.process_index for d in jax.devices()],
                         minlength=jax.process_count())
    bounds = np.concatenate([[0], np.cumsum(counts)]) * len(items) // counts.sum()
    me = jax.process_index()
    return items[int(bounds[me]):int(bounds[me + 1])]


def to_global(tree: Any, sharding: Any) -> Any:
    """Host arrays (the same full value on every process) -> global arrays under
    ``sharding``, each process placing only the slices its own devices hold."""
    import jax

    def place(a: Any) -> Any:
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, tree)


def to_host(tree: Any) -> Any:
    """Global (or local) arrays -> numpy on every process. An array spread over other
    processes' devices is gathered (a collective: every process must call this)."""
    import jax

    def fetch(a: Any) -> Any:
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(fetch, tree)


__all__ = ["AUTO", "DEFAULT_TIMEOUT", "DistributedError", "Layout", "barrier", "global_mesh",
           "initialize", "is_main", "is_multi", "layout_from", "process_share", "replicated",
           "to_global", "to_host"]
