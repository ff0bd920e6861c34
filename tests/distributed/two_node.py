"""A Ray cluster of two nodes on one machine that share no disk, and an S3 server for storage.

- `S3Server`: ``moto`` in server mode on 127.0.0.1, one bucket; clients find it through
  ``AWS_ENDPOINT_URL`` (pyarrow and boto3 honour it).
- `TwoNodeCluster`: a Ray head with no CPUs and no GPUs (the driver's node: nothing can run there)
  and a worker node started with ``ray start --address`` inside its own mount namespace
  (``unshare --mount``), where a tmpfs covers ``hidden``: the driver's output directory, its raylsl
  cache, its data files. Whatever the driver wrote is invisible on the worker node, and whatever a
  worker writes there never reaches the driver's disk. Workers are placed on that node by its
  custom resource ``worker_node``.
Both are started by the test and stopped by PID (never ``ray stop``, which would stop every Ray on
the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def can_make_mount_namespaces() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt && umount /mnt"], capture_output=True)
    return probe.returncode == 0


def _stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGINT, then SIGKILL of the process group (a ``ray start --block`` has been
    seen ignoring SIGTERM for 25 s)."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


class S3Server:
    def __init__(self, log_dir: Path, bucket: str = "raylsl"):
        self.port = free_port()
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "moto.log"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto did not start; see {log_dir / 'moto.log'}")
                time.sleep(0.3)
        self.client().create_bucket(Bucket=bucket)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def requests(self, method: str, key: str) -> int:
        """How many ``method`` requests (GET, PUT...) for object ``key`` the server has logged."""
        return sum(f"{method} /{self.bucket}/{key} " in line for line in self.log.read_text().splitlines())

    def stop(self) -> None:
        _stop(self.proc, grace=5)


class TwoNodeCluster:
    def __init__(self, hidden: list[Path], env: dict[str, str], log_dir: Path, worker_cpus: int = 3):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
        self.env.pop("RAY_ADDRESS", None)
        ray = str(VENV_BIN / "ray")
        self.head = subprocess.Popen(
            [ray, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
             "--num-gpus=0", "--include-dashboard=false", "--block", "--disable-usage-stats"],
            env=self.env, stdout=open(log_dir / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.worker = None
        try:
            self._wait_for_nodes(1)
            mounts = " && ".join(f"mount -t tmpfs tmpfs {path}" for path in hidden)
            start = (f"{ray} start --address={self.address} --node-ip-address=127.0.0.1 --num-cpus={worker_cpus} "
                     f"--num-gpus=0 --resources='{{\"worker_node\": 100}}' --block --disable-usage-stats")
            self.worker = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {start}"],
                env=self.env, stdout=open(log_dir / "worker-node.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True)
            self._wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise
        self.driver_env = {**self.env, "RAY_ADDRESS": self.address}

    def _wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True,
                                 text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster did not reach {count} node(s)")

    def node_ids(self) -> dict[str, str]:
        """Ray's node id of the ``head`` (the driver's node) and of the ``worker`` node."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                 "print(*[('worker' if 'worker_node' in n['Resources'] else 'head') + '=' + n['NodeID'] "
                 "for n in ray.nodes() if n['Alive']])")
        out = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True, text=True,
                             check=True)
        return dict(item.split("=") for item in out.stdout.split())

    def raylsl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``raylsl ARGS`` as a user would run it on the head (the driver), against this cluster."""
        return subprocess.run([str(VENV_BIN / "raylsl"), *args], env=self.driver_env, capture_output=True,
                              text=True, timeout=timeout)

    def stop(self) -> None:
        _stop(self.worker)
        _stop(self.head)
