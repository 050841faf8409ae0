"""A real Ray cluster started the way an operator starts one: `ray start --head` with the dashboard (the
job server) plus `ray start --address` for a second node, each with its own temp dir, token
authentication on (Ray's default since 2.60), and every port chosen free on 127.0.0.1. Stopped by PID:
the processes whose command line names one of its temp dirs, and their children (never Ray's stop-all
command, which would end every Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    """Ports Ray would otherwise take at fixed defaults (52365 for the agent, ...), clashing with any other
    Ray on the machine."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
            "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port())]


@dataclass
class RayHead:
    """A running 2-node cluster: `gcs_address` for drivers, `dashboard_url` for job submission, `env`
    with the token a client needs."""

    env: dict[str, str]
    gcs_address: str = ""
    dashboard_url: str = ""
    temp_dirs: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *, head_cpus: int = 3, node_cpus: int = 1, extra_env: dict[str, str] | None = None) -> "RayHead":
        # not the CLI's loopback-only switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 refuses a second node): an
        # operator's cluster, which already binds 127.0.0.1 through --node-ip-address
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                   # the cluster's Python first on PATH, as on a node of the project image: a job's entrypoint
                   # (`python -m ...`) runs with it
                   PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                   **(extra_env or {}))
        head = cls(env)
        gcs_port, dash_port = free_port(), free_port()
        head.gcs_address, head.dashboard_url = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}"
        try:
            head._ray_start(["--head", "--port", str(gcs_port), "--num-cpus", str(head_cpus),
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash_port), "--ray-client-server-port", str(free_port())])
            head._ray_start(["--address", head.gcs_address, "--num-cpus", str(node_cpus)])
            head.wait_for_nodes(2)
        except BaseException:
            head.stop()
            raise
        return head

    def _ray_start(self, args: list[str]) -> None:
        # short paths: Ray's socket paths live in the temp dir and a Unix socket path has ~107 bytes
        temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
        self.temp_dirs.append(temp_dir)
        cmd = [RAY, "start", *args, "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
               "--disable-usage-stats", *_agent_ports()]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        probe = (f"import ray; ray.init(address={self.gcs_address!r}, log_to_driver=False); "
                 "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout_s
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                                 timeout=120)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster never had {n} nodes: {out.stdout[-500:]} {out.stderr[-2000:]}")
            time.sleep(1)

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming one of its temp dirs, and their descendants."""
        own = []
        for p in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if any(d in cmdline for d in self.temp_dirs):
                own.append(p)
        found = {p.pid: p for p in own}
        for p in own:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        return list(found.values())

    def stop(self, timeout_s: float = 15) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass

        def running() -> list[psutil.Process]:
            # a zombie has exited (its parent, gone too, left it to init): nothing to stop
            out = []
            for p in procs:
                try:
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(p)
                except psutil.Error:
                    pass
            return out

        deadline = time.monotonic() + timeout_s
        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in running():
            try:
                p.kill()
            except psutil.Error:
                pass
