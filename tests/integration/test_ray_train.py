"""Ray Train data-parallel training on real local Ray worker processes (gloo on CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from gan_core.checkpoint import load_training_state
from gan_core.config import ConfigError
from gan_core.networks import apply
from gan_core.training import build_training_state
from infra.base.console import TICK
from infra.data.datasets import stage
from infra.train.plan import ClusterConfig, TrackingSpec, worker_threads
from infra.train.ray_train import launch_training
from tests.ray_checkpoints import registered_steps
from tests.factories import tiny_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ring8_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    return stage("ring8", str(root), num_samples=2048, seed=0).uri


def tiny(**overrides):
    base = {"train.total_steps": 20, "train.checkpoint_every_steps": 10, "train.tick_every_steps": 5,
            "network.g_norm": "layer"}  # batch-independent normalisation: N workers == 1 worker
    base.update(overrides)
    return tiny_config(base)


def test_every_update_leaves_workers_bitwise_identical(ray_cluster, ring8_dataset, tmp_path, mlflow_tracking,
                                                       capfd):
    cfg = tiny(**{"train.total_steps": 10, "train.d_steps": 2, "network.g_norm": "batch",
                  "loss.r1_gamma": 1.0})
    progress: list[str] = []
    out = launch_training(cfg, ring8_dataset, ClusterConfig(num_workers=2, storage_path=str(tmp_path),
                                                            verify_sync=True, max_failures=0),
                          tracking=TrackingSpec(experiment="sync-test", tracking_uri=mlflow_tracking),
                          on_progress=progress.append)
    # the driver followed rank 0's ticks (a Prefect task passes its run logger): the last one always
    assert all(TICK.match(line) for line in progress), progress
    assert TICK.match(progress[-1]).groups() == ("10", "10"), progress
    # Ray forwards the workers' lines: the tick lines, without Ray Train's dict per report
    deadline, seen = time.monotonic() + 20, ""
    while progress[-1] not in seen and time.monotonic() < deadline:
        time.sleep(0.5)
        seen += "".join(capfd.readouterr())
    assert progress[-1] in seen, seen[-3000:]
    assert "Reporting training result" not in seen and "TrainingReport(" not in seen, seen[-3000:]
    # 2 D updates + 1 G update per step, each followed by a digest comparison across both workers
    assert out.metrics["sync/checks"] == 10 * 3
    assert out.metrics["sync/mismatches"] == 0
    assert out.metrics["step"] == 10
    # rank 0 tracked the run in MLflow: per-tick metrics with step = images seen, the checkpoints
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_tracking)
    run = client.get_run(out.mlflow_run_id)
    assert run.info.run_name == out.run_name and run.info.status == "FINISHED"
    history = client.get_metric_history(out.mlflow_run_id, "loss/D")
    assert [m.step for m in history] == [5 * 2 * 32, 10 * 2 * 32]  # k = 2 real minibatches per step
    assert run.data.tags["ganpipe.last_checkpoint"].endswith(f"{out.run_name}/checkpoint-000000010")


# (conditional with the non-saturating loss is the intersection of these two: the labels' path is the
# rpgan case's, the loss the unconditional case's; it ran as a third case, about 55 s, and is not repeated)
@pytest.mark.parametrize("conditional, loss", [(False, {}), (True, {"loss.kind": "rpgan", "loss.r2_gamma": 0.5})],
                         ids=["unconditional", "rpgan-conditional"])
def test_two_workers_reproduce_one_worker(ray_cluster, ring8_dataset, tmp_path, conditional, loss):
    # conditional: ring8's staged mode ids are the class labels; they travel with the real batches (rpgan: G's
    # step takes its own real minibatch, labels included, through Ray Data too)
    cfg = tiny(**({"network.conditional": True, "data.num_classes": 8} if conditional else {}), **loss)
    one = launch_training(cfg, ring8_dataset, ClusterConfig(num_workers=1, storage_path=str(tmp_path / "one"),
                                                            max_failures=0))
    two = launch_training(cfg, ring8_dataset, ClusterConfig(num_workers=2, storage_path=str(tmp_path / "two"),
                                                            max_failures=0))
    a, b = load_training_state(one.checkpoint_uri), load_training_state(two.checkpoint_uri)
    assert a.step == b.step == 20
    # NOTE: RpGAN compares D's outputs on (real, fake) pairs of one class, so D's biases get gradients that
    # (nearly) cancel: float noise, which Adam scales up to steps of about lr. Measured in 2-process gloo runs:
    # the output bias and a hidden bias drift by up to 3.9e-4 after 20 steps, every weight stays within 4e-7.
    # So for rpgan D's biases are compared through what the loss sees, D's logit gaps, not one by one.
    rpgan = cfg.loss.kind == "rpgan"
    for net in ("G", "D"):
        for (name, pa), (_, pb) in zip(getattr(a, net).named_parameters(), getattr(b, net).named_parameters()):
            if rpgan and net == "D" and name.endswith("bias"):
                continue
            diff = (pa - pb).abs().max().item()
            assert diff <= 1e-4, f"{net}.{name} differs by {diff}"
    if rpgan:
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        c = torch.arange(64) % 8
        with torch.no_grad():
            gap_a, gap_b = (apply(s.D, x, c) - apply(s.D, x.flip(0), c) for s in (a, b))
        assert (gap_a - gap_b).abs().max().item() <= 1e-3
    # and training really happened: 20 steps of images, and parameters moved away from the initialisation
    assert a.images_seen == 20 * cfg.train.global_batch_size
    init = build_training_state(one.config)  # the same seed: the state training started from
    moved = max((p - q).abs().max().item() for net in ("G", "D")
                for p, q in zip(getattr(a, net).parameters(), getattr(init, net).parameters()))
    assert moved > 1e-3, f"parameters moved by at most {moved} in 20 steps"


def test_streaming_without_a_spare_cpu_is_rejected_before_launch(ray_cluster, ring8_dataset, tmp_path):
    cpus = ray_cluster.cluster_resources()["CPU"]
    with pytest.raises(ConfigError, match="cluster.data_loading: got 'stream' .*at least 1 CPU beyond"):
        launch_training(tiny(), ring8_dataset, ClusterConfig(num_workers=1, cpus_per_worker=cpus,
                                                             storage_path=str(tmp_path), data_loading="stream"))


def test_worker_threads_share_this_hosts_cores_on_a_local_cluster(ray_cluster, monkeypatch):
    """auto (0): on a one-node cluster, min(host cores, Ray's CPUs) shared among the workers, one core left
    to Ray Data when streaming, capped by OMP_NUM_THREADS; an explicit count or a GPU is taken as given."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)))  # a 3-core host
    cpus = int(ray_cluster.cluster_resources()["CPU"])
    cores = min(3, cpus)
    assert worker_threads(ClusterConfig(num_workers=1), "memory") == cores
    assert worker_threads(ClusterConfig(num_workers=2), "memory") == max(1, cores // 2)
    assert worker_threads(ClusterConfig(num_workers=1), "stream") == cores - 1
    assert worker_threads(ClusterConfig(num_workers=8), "memory") == 1  # never below one
    assert worker_threads(ClusterConfig(num_workers=1, threads_per_worker=5), "memory") == 5
    assert worker_threads(ClusterConfig(num_workers=1, use_gpu=True, cpus_per_worker=2), "memory") == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_threads(ClusterConfig(num_workers=1), "memory") == 1


def test_uneven_global_batch_is_rejected_before_launch(ring8_dataset, tmp_path):
    cfg = tiny(**{"train.global_batch_size": 33})
    with pytest.raises(ConfigError, match="train.global_batch_size: got 33 .*multiple of the number of workers"):
        launch_training(cfg, ring8_dataset, ClusterConfig(num_workers=2, storage_path=str(tmp_path)))


def _train_worker_pids() -> list[int]:
    pids = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            title = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in title:
            pids.append(p.info["pid"])
    return pids


def _checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    for p in run_dir.glob("checkpoint-*"):
        suffix = p.name[len("checkpoint-"):]
        if suffix.isdigit() and (p / "summary.json").exists():
            steps.append(int(suffix))
    return sorted(steps)


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster, ring8_dataset, tmp_path):
    interval = 100
    cfg = tiny(**{"train.total_steps": 700, "train.checkpoint_every_steps": interval,
                  "train.tick_every_steps": 50, "train.num_checkpoints_to_keep": 50})
    cluster = ClusterConfig(num_workers=2, storage_path=str(tmp_path), max_failures=2, run_name="kill-test")
    seen: dict[str, object] = {}

    def killer():
        run_dir = tmp_path / "kill-test"
        deadline = time.time() + 600
        while time.time() < deadline:
            steps = registered_steps(run_dir)
            pids = _train_worker_pids()
            seen["last_poll"] = (steps[-1:], pids)
            if steps and steps[-1] >= 2 * interval and len(pids) >= 2:
                seen["latest_before_kill"] = steps[-1]
                for pid in reversed(_train_worker_pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # a worker of an earlier run that just exited
                        continue
                    seen["killed"] = pid
                    return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = launch_training(cfg, ring8_dataset, cluster)
    t.join(timeout=5)
    assert "killed" in seen, f"the run finished before a worker could be killed: {seen}"
    assert out.metrics["step"] == 700
    resumed_from = out.metrics["progress/resumed_from_step"]
    # the restarted group began from a checkpoint at or after the last one seen before the kill,
    # so at most one checkpoint interval of work was recomputed
    assert resumed_from >= seen["latest_before_kill"]
    assert resumed_from > 0
    assert load_training_state(out.checkpoint_uri).step == 700


def _ganpipe_train(dataset: str, storage: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--dataset", dataset, "--preset", "tiny",
            "--set", f"train.total_steps={steps}", "--set", "train.checkpoint_every_steps=100",
            "--set", "train.tick_every_steps=50", "--workers", "1", "--storage", storage,
            "--run-name", "resubmit-test"]


def test_resubmitted_run_continues_from_its_checkpoint(ray_cluster, ring8_dataset, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    cmd = _ganpipe_train(ring8_dataset, str(tmp_path), 1000)
    run_dir = tmp_path / "resubmit-test"
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not registered_steps(run_dir)[-1:] >= [300]:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.1)
    done_before = registered_steps(run_dir)[-1]
    first.send_signal(signal.SIGKILL)  # the driver dies mid-run
    first.wait()
    assert done_before < 1000
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    log = second.stdout + second.stderr
    assert "resuming resubmit-test from step" in log
    resumed = int(log.split("resuming resubmit-test from step")[1].split()[0])
    assert resumed >= done_before  # steps already done are not redone
    assert _checkpoint_steps(run_dir)[-1] == 1000


def test_checkpoints_on_s3_with_streamed_data(ray_cluster, ring8_dataset, s3_bucket):
    """storage_path on moto's S3 server; the data streamed through Ray Data (2048 rows = 64 batches per
    epoch), so 80 steps cross an epoch boundary."""
    import boto3

    cfg = tiny(**{"train.total_steps": 80, "train.checkpoint_every_steps": 40, "train.tick_every_steps": 40})
    progress: list[str] = []
    out = launch_training(cfg, ring8_dataset, ClusterConfig(num_workers=1, storage_path=f"s3://{s3_bucket}/ray",
                                                            data_loading="stream", max_failures=0),
                          on_progress=progress.append)
    assert progress and TICK.match(progress[-1]).groups() == ("80", "80"), progress  # followed on S3 too
    assert out.checkpoint_uri.startswith(f"s3://{s3_bucket}/ray/")
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.endswith("checkpoint-000000080/state.pt") for k in keys), keys
    assert out.metrics["step"] == 80
    assert out.metrics["kimg"] == pytest.approx(80 * cfg.train.global_batch_size / 1000)


def test_two_node_cluster_survives_losing_a_node(ring8_dataset, tmp_path):
    """Two raylets on 127.0.0.1 (ray.cluster_utils.Cluster), one worker each; the second node is removed
    after the second registered checkpoint. Its own interpreter: a separate Ray cluster from the session's."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, "-m", "tests.integration.two_node_run", ring8_dataset, str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=500, env=env)
    log = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, log[-4000:]
    result = json.loads(lines[0].split(" ", 1)[1])
    placements = [ln for ln in log.splitlines() if "worker group: 2 workers on" in ln]
    assert placements and "on 2 node(s)" in placements[0], placements  # one worker per node at first
    assert result["removed"], "the second node was never removed"
    assert result["nodes_alive"] == 1
    assert result["step"] == 1500
    # the restarted group (both workers on the head now) resumed from a checkpoint at or after the last
    # one registered before the node went away
    assert result["resumed_from"] >= result["latest_before_removal"] > 0
    assert "on 1 node(s)" in placements[-1], placements
