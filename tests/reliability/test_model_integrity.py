"""Registered models run only the code they shipped, the champion alias survives racing promotions, and
the pyfunc's documented calls work (issue 15, items 2, 3, 9).

Each version is logged from a tiny MLP generator (CPU, about a second); the model files are edited in
the local store, where the registry's artifacts are the files themselves.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import gan_core
from gan_core.networks import build_generator
from gan_core.sampling import MAX_NUM_SAMPLES, generate, latents_for_range
from infra.models import registry
from infra.models.evaluation import Evaluation
from infra.models.registry import RegistryError, log_generator, promote_if_better, promotion_lock
from tests.factories import tiny_generator

pytestmark = pytest.mark.integration

LEGACY_PYFUNC = Path(__file__).parent / "data" / "generator_model_before_issue15.py.txt"
# appended to a copy of gan_core/networks.py: an engine whose generators add 1000 to every output
PLUS_1000 = '''

_build_generator_unpatched = build_generator


def build_generator(config):  # a test-built variant of the engine: every output + 1000
    G = _build_generator_unpatched(config)
    G.register_forward_hook(lambda module, inputs, output: output + 1000.0)
    return G
'''


@pytest.fixture(scope="module")
def tiny():
    """(G, config): a tiny MLP generator (z_dim 8 -> 2-D points) with fixed random weights."""
    return tiny_generator()


def log_version(name: str, G, cfg) -> str:
    """Log G as a new registered version of ``name``; returns models:/<name>/<version>."""
    import mlflow

    from infra.base.settings import mlflow_client
    from infra.train.tracking import ensure_experiment

    client = mlflow_client()
    run = client.create_run(ensure_experiment(client, "model-integrity"))
    info, _ = log_generator(G, cfg, run_id=run.info.run_id)
    client.set_terminated(run.info.run_id)
    return f"models:/{name}/{mlflow.register_model(info.model_uri, name).version}"


def stored_model_dir(model_uri: str) -> Path:
    """The version's model folder in the local artifact store (editing it edits the registered model)."""
    import mlflow
    from mlflow import MlflowClient

    name, version = model_uri[len("models:/"):].split("/")
    return Path(mlflow.artifacts.download_artifacts(MlflowClient().get_model_version(name, version).source))


def load(model_uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)


def expected(G, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return G(torch.from_numpy(z)).numpy()


# --- item 2: each version runs the engine it shipped ------------------------------------------------


def log_from_checkout(name: str, G, cfg, tmp_path, monkeypatch, module: str, patch: str) -> str:
    """Log G as a version of ``name`` from another checkout of the engine: a copy of gan_core whose
    ``module`` has ``patch`` appended. Returns models:/<name>/<version>."""
    other = tmp_path / f"checkout-{name}"
    shutil.copytree(Path(gan_core.__file__).parent, other / "gan_core", ignore=shutil.ignore_patterns("__pycache__"))
    source = other / "gan_core" / module
    source.write_text(source.read_text() + patch)
    with monkeypatch.context() as mp:
        mp.setattr(registry, "gan_core", SimpleNamespace(__file__=str(other / "gan_core" / "__init__.py")))
        return log_version(name, G, cfg)


def test_two_versions_in_one_process_each_run_their_own_shipped_engine(store, tiny, tmp_path, monkeypatch):
    G, cfg = tiny
    v1 = log_version("two-engines", G, cfg)
    # v2: the same weights, logged from another checkout of the engine (generators add 1000)
    v2 = log_from_checkout("two-engines", G, cfg, tmp_path, monkeypatch, "networks.py", PLUS_1000)

    assert "gan_core.networks" in sys.modules  # the process's own engine is imported, as in a Ray actor
    m1, m2, m1_again = load(v1), load(v2), load(v1)
    z = latents_for_range(3, 0, 6, cfg.network.z_dim).numpy()
    np.testing.assert_allclose(m1.predict(z), expected(G, z), rtol=0, atol=1e-6)
    np.testing.assert_allclose(m2.predict(z), expected(G, z) + 1000.0, rtol=0, atol=1e-3)
    np.testing.assert_allclose(m1_again.predict(z), expected(G, z), rtol=0, atol=1e-6)  # v2 did not leak into v1
    seeded = {"num_samples": 4, "seed": 5, "start": 100}
    np.testing.assert_allclose(m2.predict(None, params=seeded), m1.predict(None, params=seeded) + 1000.0,
                               rtol=0, atol=1e-3)
    # each under its own private package; the process's gan_core is untouched
    modules = [type(m.unwrap_python_model().G).__module__ for m in (m1, m2, m1_again)]
    assert all(m.startswith("_ganpipe_model_") and m.endswith(".networks") for m in modules), modules
    assert modules[0] == modules[2] != modules[1]
    assert not hasattr(gan_core.networks, "_build_generator_unpatched")


OTHER_LATENTS = '''

_latents_for_range_unpatched = latents_for_range


def latents_for_range(seed, start, count, z_dim, **kwargs):  # a test-built variant of the engine: other latents
    return -_latents_for_range_unpatched(seed, start, count, z_dim, **kwargs)
'''


def test_batch_sampling_draws_with_the_versions_own_engine(store, tiny, tmp_path, monkeypatch):
    """infra.models.batch_sampling.generate_range (each sampling actor's shard) gives exactly the version's own
    seed-addressed predict, latents included, even where the process's gan_core draws other latents."""
    from infra.models.batch_sampling import generate_range

    G, cfg = tiny
    model = load(log_from_checkout("own-latents", G, cfg, tmp_path, monkeypatch, "sampling.py", OTHER_LATENTS))
    own = model.predict(None, params={"num_samples": 6, "seed": 2, "start": 1030})
    shard = generate_range(model.unwrap_python_model(), seed=2, start=1030, count=6, batch_size=4)
    np.testing.assert_array_equal(shard, own)
    z = latents_for_range(2, 1030, 6, cfg.network.z_dim).numpy()  # the process's engine: other latents
    assert not np.allclose(shard, expected(G, z), atol=1e-3)


def _plant_bytecode(source: Path, code: str) -> None:
    """A __pycache__ entry for ``source`` that Python's default import would trust (same mtime and size)
    but that holds other code: the check must not be bypassed through bytecode."""
    st = source.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little") + \
        (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(compile(code, str(source), "exec")))


@pytest.mark.parametrize("fault, message", [
    ("edited", r"code file code/gan_core/networks\.py has been modified: sha256 \w+ does not match"),
    ("added", r"code file code/gan_core/extra\.py was not shipped with the model"),
    ("removed", r"code file code/gan_core/sampling\.py is missing"),
    ("unrecorded", r"has no 'code_sha256' in its model_config; refusing to run code that was not checksummed"),
])
def test_shipped_code_is_checksummed_on_load(store, tiny, fault, message):
    G, cfg = tiny
    uri = log_version(f"code-{fault}", G, cfg)
    load(uri)  # intact: loads
    code = stored_model_dir(uri) / "code" / "gan_core"
    if fault == "edited":
        (code / "networks.py").write_text((code / "networks.py").read_text() + "\nimport os  # edited\n")
    elif fault == "added":
        (code / "extra.py").write_text("print('not shipped')\n")
    elif fault == "removed":
        (code / "sampling.py").unlink()
    else:  # the MLmodel file edited to drop the code's checksums
        from mlflow.models import Model

        mlmodel = stored_model_dir(uri) / "MLmodel"
        meta = Model.load(mlmodel)
        del meta.flavors["python_function"]["config"]["code_sha256"]
        meta.save(mlmodel)
    with pytest.raises(Exception, match=message) as e:
        load(uri)
    assert type(e.value).__name__ == "ModelIntegrityError"


def test_planted_bytecode_does_not_run_instead_of_the_shipped_source(store, tiny, tmp_path):
    """In a clean consumer process (no gan_core imported yet, where Python would trust the bytecode)."""
    G, cfg = tiny
    uri = log_version("code-pyc", G, cfg)
    networks = stored_model_dir(uri) / "code" / "gan_core" / "networks.py"
    _plant_bytecode(networks, networks.read_text() + PLUS_1000)
    z = latents_for_range(0, 0, 3, cfg.network.z_dim).numpy()
    np.save(tmp_path / "z.npy", z)
    consumer = ("import sys, numpy as np, mlflow; m = mlflow.pyfunc.load_model(sys.argv[1]); "
                "np.save(sys.argv[3], m.predict(np.load(sys.argv[2])))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", consumer, uri, str(tmp_path / "z.npy"), str(tmp_path / "x.npy")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), expected(G, z), rtol=0, atol=1e-6)


def _tensor_signature(config):
    """The signature versions had before issue 15: z float32 (-1, z_dim) required."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.network.z_dim), "z")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *config.data.shape), "x")]),
        params=ParamSchema([ParamSpec(p, "long", 0) for p in ("num_samples", "seed", "start")]))


def log_legacy_version(name, G, cfg, tmp_path, monkeypatch) -> str:
    """A version as registered before issue 15: the older pyfunc file and its tensor signature."""
    pyfunc = tmp_path / "generator_model.py"
    pyfunc.write_text(LEGACY_PYFUNC.read_text())
    with monkeypatch.context() as mp:
        mp.setattr(registry, "PYFUNC_FILE", pyfunc)
        mp.setattr(registry, "model_signature", _tensor_signature)
        return log_version(name, G, cfg)


def test_a_version_logged_before_issue15_still_loads_and_predicts(store, tiny, tmp_path, monkeypatch):
    """Its own (older) pyfunc and signature; the extra code_sha256 in its model_config is ignored by it."""
    G, cfg = tiny
    uri = log_legacy_version("legacy-gen", G, cfg, tmp_path, monkeypatch)
    model = load(uri)
    z = latents_for_range(1, 0, 5, cfg.network.z_dim).numpy()
    np.testing.assert_allclose(model.predict(z), expected(G, z), rtol=0, atol=1e-6)
    seeded = model.predict(np.zeros((0, cfg.network.z_dim), np.float32), params={"num_samples": 3, "seed": 2})
    np.testing.assert_allclose(seeded, generate(G, 3, 2).numpy(), rtol=0, atol=1e-6)
    # truncated sampling came later: its shipped code would ignore the param, so the batch sampler refuses it
    from infra.models.batch_sampling import SamplingError, generate_range, plan_sampling, resolve_model

    assert not resolve_model(uri).supports_truncation
    with pytest.raises(SamplingError, match=r"^--truncation 0\.5: this model version was registered before") as e:
        plan_sampling(uri, 10, 0, str(tmp_path / "t"), truncation=0.5)
    assert "\n" not in str(e.value) and not (tmp_path / "t").exists()
    with pytest.raises(SamplingError, match="registered before truncated sampling"):
        generate_range(model.unwrap_python_model(), 0, 0, 3, 3, truncation=0.5)



def _signature_without_label(config, model_signature=registry.model_signature):
    """A class-conditional model's signature as if logged before class-conditional sampling: no label param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema

    sig = model_signature(config)
    return ModelSignature(inputs=sig.inputs, outputs=sig.outputs,
                          params=ParamSchema([p for p in sig.params.params if p.name != "label"]))


def test_sample_class_is_refused_in_one_line_before_anything_is_written(store, tiny, tmp_path, monkeypatch, capsys):
    """`ganpipe sample --class K` (issue 17 item 2) on real registered versions, the classes read from each
    version's metadata and signature (the model is not loaded): an unconditional version, K outside
    [0, K classes), a version logged before class-conditional sampling (the pre-issue-15 pyfunc; and a
    conditional one whose signature lacks the label param): exit 2, one line, no --out, Ray not started."""
    import infra.base.ray_cluster
    from infra.models.batch_sampling import SamplingError, generate_range, plan_sampling, resolve_model
    from pipelines.cli import main

    G, cfg = tiny
    cfg_c = cfg.with_overrides({"network.conditional": True, "data.num_classes": 8})
    torch.manual_seed(0)
    G_c = build_generator(cfg_c).eval()
    uncond, cond = log_version("class-uncond", G, cfg), log_version("class-cond", G_c, cfg_c)
    with monkeypatch.context() as mp:
        mp.setattr(registry, "model_signature", _signature_without_label)
        cond_before = log_version("class-cond-before", G_c, cfg_c)
    legacy = log_legacy_version("class-legacy", G, cfg, tmp_path, monkeypatch)
    assert (resolve_model(cond).num_classes, resolve_model(cond).supports_class_label) == (8, True)
    assert (resolve_model(uncond).num_classes, resolve_model(uncond).supports_class_label) == (0, False)
    assert (resolve_model(cond_before).num_classes, resolve_model(cond_before).supports_class_label) == (8, False)
    assert (resolve_model(legacy).num_classes, resolve_model(legacy).supports_class_label) == (0, False)

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    ray_starts = []
    monkeypatch.setattr(infra.base.ray_cluster, "ensure_ray", lambda *a, **k: ray_starts.append(a))
    capsys.readouterr()  # the registrations' own log lines
    for uri, k, message in ((uncond, "0", "--class 0: this model version has no classes"),
                            (legacy, "2", "--class 2: this model version has no classes"),
                            (cond_before, "3", "--class 3: this model version was registered before class-conditional"),
                            (cond, "8", "--class: got 8; allowed: an integer from 0 to 7"),
                            (cond, "-1", "--class: got -1; allowed: an integer >= 0")):
        out = tmp_path / f"out-{uri.split('/')[-2]}-{k}"
        rc = main(["sample", "--model", uri, "--num-samples", "10", "--out", str(out), "--class", k,
                   "--engine", "direct", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.splitlines() == [err] and err.startswith("error: ") and message in err, (uri, k, err)
        assert "Traceback" not in err and not out.exists()
    assert ray_starts == []
    plan_sampling(cond, 10, 0, str(tmp_path / "ok"), class_label=7)  # every class of a conditional version
    # a sampling actor holding the old pyfunc refuses too (its code would ignore the class)
    with pytest.raises(SamplingError, match="registered before class-conditional sampling") as e:
        generate_range(load(legacy).unwrap_python_model(), 0, 0, 3, 3, class_label=0)
    assert "\n" not in str(e.value)

# --- item 9: the pyfunc's documented calls ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(store, tiny):
    return load(log_version("predict-gen", *tiny))


def test_documented_predict_calls_work(tiny_model, tiny):
    """infra/models/registry.py and infra/models/generator_model.py show predict(z) and predict(None, params=...)."""
    G, cfg = tiny
    x = tiny_model.predict(None, params={"num_samples": 16, "seed": 0})
    assert x.shape == (16, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x, generate(G, 16, 0).numpy(), rtol=0, atol=1e-6)
    z = latents_for_range(0, 0, 16, cfg.network.z_dim).numpy()
    np.testing.assert_allclose(tiny_model.predict(z), x, rtol=0, atol=1e-6)
    # float64 that holds float32 values exactly (JSON of a float32 array, as the scoring server gets it)
    np.testing.assert_allclose(tiny_model.predict(z.astype(np.float64)), x, rtol=0, atol=1e-6)
    assert tiny_model.predict(np.zeros((0, cfg.network.z_dim), np.float32)).shape == (0, 2)


def _with_value(v: float) -> np.ndarray:
    z = np.zeros((20, 8), np.float32)
    z[3, 5] = v
    return z


@pytest.mark.parametrize("model_input, params, message", [
    ("float64", None, r"latents z are float64 of shape \(20, 8\) and not exactly float32 values; accepted: "
                      r"latents z float32 of shape \(n, 8\)"),
    ("wide", None, r"latents z are float32 of shape \(20, 3\); accepted: latents z float32 of shape \(n, 8\)"),
    ("float32", {"num_samples": 4}, r"pass latents z or params num_samples, not both"),
    (None, None, r"no input; accepted: latents z float32 of shape \(n, 8\), or None with params"),
    (None, {"num_samples": -5}, r"num_samples=-5 is out of range; accepted: 1 to 1000000000"),
    (None, {"num_samples": 0}, r"no input; accepted"),
    (None, {"num_samples": MAX_NUM_SAMPLES + 1}, r"num_samples=1000000001 is out of range; accepted: 1 to 1000000000"),
    (None, {"num_samples": 10**12}, r"num_samples=1000000000000 is out of range"),
    (None, {"num_samples": 2, "start": -1}, r"start=-1 must be >= 0"),
    ("nan", None, r"latents z hold a non-finite value \(nan at row 3, column 5\); accepted: finite float32"),  # issue 31
    ("inf", None, r"latents z hold a non-finite value \(inf at row 3, column 5\)"),
])
def test_bad_predict_calls_are_short_errors_before_any_work(tiny_model, model_input, params, message):
    rng = np.random.default_rng(0)
    z = {"float64": rng.normal(size=(20, 8)), "wide": rng.normal(size=(20, 3)).astype(np.float32),
         "float32": rng.normal(size=(20, 8)).astype(np.float32), None: None,
         "nan": _with_value(float("nan")), "inf": _with_value(float("inf"))}[model_input]
    started = time.monotonic()
    with pytest.raises(ValueError, match=message) as e:
        tiny_model.predict(z, params=params)
    assert time.monotonic() - started < 5  # refused up front, not after generating
    text = str(e.value)
    assert len(text) < 300 and "\n" not in text, text  # never the array itself


# --- item 3: racing promotions -----------------------------------------------------------------------


def _register_scored(name: str, model_uri: str, scores: list[float]) -> list[str]:
    """Versions of ``name`` (all the same logged model) tagged as scored by 'score' (higher is better)."""
    import mlflow

    return [str(mlflow.register_model(model_uri, name, tags={
        "eval.primary": "score", "eval.value": repr(s), "eval.higher_is_better": "true"}).version) for s in scores]


def test_concurrent_promotions_leave_the_alias_on_the_best(store, tiny, monkeypatch):
    """Four registrations promote at once, in rounds; each reads the champion, then waits before setting
    it (a slow registry), the best the shortest: a check-then-set ends on a worse version every round."""
    from mlflow import MlflowClient

    from infra.base.settings import mlflow_client

    log_version("race-base", *tiny)
    source = MlflowClient().get_model_version("race-base", "1").source  # one logged model for every version
    delays: dict[str, float] = {}
    read = MlflowClient.get_model_version_by_alias

    def slow_read(self, name, alias):
        mv = read(self, name, alias)
        time.sleep(delays.get(threading.current_thread().name, 0.0))
        return mv

    rng = np.random.default_rng(0)
    for round_ in range(2):
        name = f"race-{round_}"
        scores = [float(s) for s in rng.permutation([0.2, 0.4, 0.6, 0.8])]
        versions = _register_scored(name, source, scores)
        # the holder before the race: a poor version 0
        first = _register_scored(name, source, [0.1])[0]
        mlflow_client().set_registered_model_alias(name, "champion", first)
        delays.update({f"promote-{v}": 0.6 * (1.0 - s) for v, s in zip(versions, scores)})
        barrier, results = threading.Barrier(len(versions)), {}

        def promote(version, score):
            barrier.wait()
            results[version] = promote_if_better(name, version, Evaluation({"score": score}, "score", True, {}))

        with monkeypatch.context() as mp:
            mp.setattr(MlflowClient, "get_model_version_by_alias", slow_read)
            threads = [threading.Thread(target=promote, args=(v, s), name=f"promote-{v}")
                       for v, s in zip(versions, scores)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        best = versions[int(np.argmax(scores))]
        assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == best, (round_, scores)
        assert results[best][:2] == (True, best), results[best]
        assert sorted(results) == sorted(versions), "every promotion returned"
    leftovers = [m.name for m in MlflowClient().search_registered_models()
                 if m.name.endswith(registry.PROMOTION_LOCK_SUFFIX)]
    assert leftovers == [], "no promotion lock is left behind"


# One contender in its own process: reads the champion slowly (``delay`` seconds), then promotes.
CONTENDER = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
from infra.models.evaluation import Evaluation
from infra.models.registry import promote_if_better

name, version, score, delay, sync = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
read = MlflowClient.get_model_version_by_alias

def slow_read(self, *args):
    mv = read(self, *args)
    time.sleep(delay)
    return mv

MlflowClient.get_model_version_by_alias = slow_read
(sync / f"ready-{version}").touch()
while not (sync / "go").exists():
    time.sleep(0.01)
print(promote_if_better(name, version, Evaluation({"score": score}, "score", True, {}))[:2])
"""


def test_concurrent_promotions_from_separate_processes_leave_the_alias_on_the_best(store, tiny, tmp_path):
    from mlflow import MlflowClient

    log_version("race-procs-base", *tiny)
    source = MlflowClient().get_model_version("race-procs-base", "1").source
    name, scores = "race-procs", [0.8, 0.2, 0.6]
    first = _register_scored(name, source, [0.1])[0]
    MlflowClient().set_registered_model_alias(name, "champion", first)
    versions = _register_scored(name, source, scores)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, name, v, repr(s), repr(0.6 * (1.0 - s)), str(tmp_path)],
                              cwd=Path(__file__).parents[2], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for v, s in zip(versions, scores)]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (tmp_path / "go").touch()  # all start together
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    best = versions[int(np.argmax(scores))]
    assert str(MlflowClient().get_model_version_by_alias(name, "champion").version) == best
    assert outputs[scores.index(max(scores))][0].strip() == f"(True, '{best}')"


def test_a_held_promotion_lock_times_out_clearly_and_a_stale_one_is_broken(store, caplog):
    from mlflow import MlflowClient

    lock = "held-gen" + registry.PROMOTION_LOCK_SUFFIX
    MlflowClient().create_registered_model(lock, tags={registry.PROMOTION_LOCK_TAG: "host:1:dead"})
    with pytest.raises(RegistryError, match=r"promotion lock \(registered model 'held-gen\.promotion-lock', "
                                            r"held by host:1:dead\) stayed taken for 0 s"):
        with promotion_lock("held-gen", wait_s=0.3):
            pass
    time.sleep(0.05)
    with promotion_lock("held-gen", stale_s=0.01):  # its holder died: broken with a warning
        holder = MlflowClient().get_registered_model(lock).tags[registry.PROMOTION_LOCK_TAG]
        assert holder != "host:1:dead"
    assert "breaking the promotion lock held-gen.promotion-lock" in caplog.text
    assert not [m for m in MlflowClient().search_registered_models() if m.name == lock]


def test_a_lock_released_while_the_store_words_its_clash_error_is_taken_on_retry(store, monkeypatch):
    # the CI race: B's create clashes with A's lock, A releases it, then MLflow's SQL store reads the
    # model back to word "already exists" and raises "not found" instead; B must retry, not fail
    from mlflow import MlflowClient
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    lock = "racy-gen" + registry.PROMOTION_LOCK_SUFFIX
    MlflowClient().create_registered_model(lock, tags={registry.PROMOTION_LOCK_TAG: "host:2:alive"})
    original, released = SqlAlchemyStore.get_registered_model, []

    def holder_releases_first(self, name):
        if name == lock and not released:  # the clash's read-back: the holder lets go just before it
            released.append(name)
            MlflowClient().delete_registered_model(lock)
        return original(self, name)

    monkeypatch.setattr(SqlAlchemyStore, "get_registered_model", holder_releases_first)
    with promotion_lock("racy-gen", wait_s=5):
        holder = MlflowClient().get_registered_model(lock).tags[registry.PROMOTION_LOCK_TAG]
        assert holder != "host:2:alive"
    assert released == [lock]
    assert not [m for m in MlflowClient().search_registered_models() if m.name == lock]


def test_the_promotion_lock_works_through_an_mlflow_server(tmp_path, monkeypatch):
    """Behind a tracking server (REST), the registry's duplicate-name refusal is what the lock relies on.
    The CLI's preflight probe (GET /health) passes that real server."""
    import mlflow
    from mlflow import MlflowClient

    from infra.base.settings import check_mlflow_reachable
    from tests.integration.test_external_services import wait_for
    from tests.ray_head import free_port

    port, log = free_port(), tmp_path / "mlflow-server.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1"]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for(f"{uri}/health", server, log)
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.setenv(var, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        check_mlflow_reachable()  # the tracking and registry URIs: a real `mlflow server` answers /health
        with promotion_lock("served-gen"):
            with pytest.raises(RegistryError, match=r"promotion lock .*stayed taken"):
                with promotion_lock("served-gen", wait_s=0.5):
                    pass
        with promotion_lock("served-gen", wait_s=5):  # released: free again
            pass
        assert not [m for m in MlflowClient().search_registered_models()
                    if m.name.endswith(registry.PROMOTION_LOCK_SUFFIX)]
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
        server.terminate()
        server.wait(timeout=30)
