"""The Ray cluster a run uses: joining it, and what it has (GPUs, nodes).

Below the plan and the engines: the plan places scoring on the cluster, Ray Train and Tune run
there. ``RAY_ADDRESS`` (which ``ray job submit`` sets) selects the cluster, checked with a short
timeout before anything is written; without it a fresh local Ray is started.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

from raylsl.errors import RaylslError


def init_ray(progress: bool, num_cpus: int | None = None) -> None:
    """Joins ``RAY_ADDRESS`` when set, else starts a fresh local Ray (never a head some earlier
    ``ray start`` left recorded on this machine). A local Ray's servers listen on all of the
    machine's addresses (Ray offers no setting to bind them to loopback), behind Ray's token
    authentication, on by default since Ray 2.52 (docs/trust-and-failure.md)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=progress)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=progress)


RAY_ADDRESS_TIMEOUT_S = 5.0
"""How long `check_ray_address` waits for the cluster to answer."""


def check_ray_address() -> None:
    """Refuses a ``RAY_ADDRESS`` nothing answers at, within seconds (``auto``, ``local`` and no
    address start or find a Ray on this machine and need no check).

    Raises:
        RaylslError: the address is malformed, or no connection opens within the timeout.
    """
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise RaylslError(f"RAY_ADDRESS={address} is not an address Ray can join: use HOST:PORT (the head's port, "
                          f"6379 by default) or ray://HOST:10001")
    try:
        socket.create_connection((host, port), timeout=RAY_ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        raise RaylslError(f"RAY_ADDRESS={address}: nothing answers at {host}:{port} ({exc.strerror or exc}); start the "
                          f"Ray cluster or correct RAY_ADDRESS (unset it to run on a Ray started here)") from None


def ray_running() -> bool:
    """Whether this process is connected to Ray (without importing Ray when it is not)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def gpus_per_worker(config) -> float:
    """``gpus_per_worker`` as a number: auto is 1 when the cluster has GPUs now, else 0."""
    if config.gpus_per_worker != "auto":
        return float(config.gpus_per_worker)
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def worker_resources(config) -> dict[str, float]:
    """What one Ray worker of the run asks for: its CPUs, its GPUs (`gpus_per_worker`) and the
    extra resources that place it (``worker_resources``)."""
    gpus = gpus_per_worker(config)
    return {"CPU": config.cpus_per_worker, **({"GPU": gpus} if gpus else {}), **config.worker_resources}


def only_this_node() -> bool:
    """True when the cluster is this process's node alone, and that node runs tasks (a local Ray)."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    return len(nodes) == 1 and nodes[0]["NodeID"] == here and nodes[0]["Resources"].get("CPU", 0) > 0
