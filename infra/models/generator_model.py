"""The registered generator as an MLflow pyfunc, logged with MLflow's models-from-code.

MLflow copies this file into the model and runs it on load; nothing pickled is ever unpickled. The
model folder holds:

    artifacts/weights.pt    G_ema's state dict (torch.save; read back with weights_only=True)
    artifacts/config.json   the resolved GANConfig that rebuilds G
    code/gan_core/          the engine (pure PyTorch), so a consumer needs only mlflow + torch

and the pyfunc's ``model_config`` (in the MLmodel file) carries the sha256 of every one of those files
(``sha256`` for the artifacts, ``code_sha256`` for each file under ``code/``), the data normalisation
and the default device. Loading refuses a file whose sha256 differs, and a file missing or added under
``code/``, with `ModelIntegrityError` naming the file.

Each version runs the engine it shipped, whatever the process has imported: the verified bytes of
``code/gan_core`` are imported under a private, version-specific package name,
``_ganpipe_model_<first 16 hex digits of the code digest>`` (never from ``__pycache__``), so a process
that already imported ``gan_core`` (a Ray actor of the batch sampler), or loads two versions, runs each
version's own code. Versions with identical code share that package.
NOTE: this file itself runs before any check (MLflow executes it to find the model); what it checks is
everything else. Versions logged before ``code_sha256`` existed ship their older copy of this file and
load as they always did (their engine resolved through ``sys.path``); re-register them to get this.

Contract (see infra/models/registry.py for the signature):
- ``predict(z)``: z float32 (n, z_dim) -> samples float32 (n, C, H, W) or (n, D) in the data's
  original value range, x_data = (G_ema(z) - offset) / scale. A float64 array is accepted only if
  its values are exactly float32 values (as JSON from a float32 array arrives at the scoring
  server); other dtypes and shapes, and NaN or Inf latents, raise ValueError naming the dtype and shape
  (or the first non-finite value).
- ``predict(None, params={"num_samples": n, "seed": s, "start": i})``: samples [i, i + n) of seed s,
  addressed exactly as gan_core.sampling.generate (sample i depends only on (model, s, i));
  1 <= n <= gan_core.sampling.MAX_NUM_SAMPLES and i >= 0, else ValueError. ``None`` and an empty
  (0, z_dim) array are the same; latents and num_samples together are refused. The result is one
  in-memory array (n * prod(shape) * 4 bytes): for large n, ``ganpipe sample`` writes shards instead.
- ``params={"truncation": psi}`` (with num_samples): the truncation trick (Brock et al. 2019): every
  |z_j| <= psi, components beyond psi resampled from N(0, 1) restricted to [-psi, psi], seed-addressed
  (gan_core.sampling.latents_for_range); 0 (the default) is off, byte-identical to no truncation; a
  negative or non-finite psi raises ValueError. With latents z as input it is refused (ValueError).
- Class-conditional generators (K classes; metadata ``ganpipe.num_classes``): ``params={"label": k}``
  (with num_samples) gives samples of class k only; the default -1 gives class-balanced samples (sample
  i has class i mod K, as gan_core.sampling.labels_for_range). With latents, the input is
  ``{"z": z float32 (n, z_dim), "label": int64 (n,)}``. A label outside [0, K), a label asked of an
  unconditional generator, or latents without labels for a conditional one raise ValueError.

This file must import only mlflow, numpy, torch and the shipped engine: it runs inside consumers'
processes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow
import numpy as np

FORMAT = "ganpipe-generator/1"
WEIGHTS = "weights"  # artifact keys
CONFIG = "config"
CODE_PACKAGE = "gan_core"  # the engine's folder under code/
CODE_SHA256 = "code_sha256"  # model_config key: {path under code/ ("gan_core/config.py"): sha256}
PRIVATE_PACKAGE_PREFIX = "_ganpipe_model_"
PREDICT_CHUNK_ROWS = 8192  # bounds memory for large latent inputs (rows are independent in eval mode)


class ModelIntegrityError(RuntimeError):
    """A model file's sha256 does not match the one recorded when the model was logged."""


def _sha256_file(path: str | Path) -> str:
    # NOTE: a copy of gan_core.files.sha256_file (the one owner), kept here because this file runs before
    # the engine it ships is verified (and consumers' processes have no installed gan_core to import)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_files(code_dir: str | Path) -> dict[str, Path]:
    """The engine's files under ``code_dir`` (the model's ``code/``), keyed by their POSIX path relative
    to it ("gan_core/networks.py"); ``__pycache__`` folders are Python's, not the model's, and are left out."""
    root = Path(code_dir)
    return {p.relative_to(root).as_posix(): p for p in sorted((root / CODE_PACKAGE).rglob("*"))
            if p.is_file() and "__pycache__" not in p.relative_to(root).parts}


def code_digest(code_sha256: dict[str, str]) -> str:
    """One sha256 over {path: sha256} of the shipped code; names the version's private package."""
    return hashlib.sha256(json.dumps(sorted(code_sha256.items())).encode()).hexdigest()


class _VerifiedPackage(importlib.abc.MetaPathFinder, importlib.abc.SourceLoader):
    """Imports ``package`` and its submodules from in-memory source bytes (those that were hashed), so
    that neither an edit after the check nor a stale ``__pycache__`` can change what runs."""

    def __init__(self, package: str, root: Path, sources: dict[str, bytes]):
        self.package, self.root, self.sources = package, root, sources  # sources: path under root -> bytes
        self.paths: dict[str, str] = {}  # module name -> file path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.package and not fullname.startswith(self.package + "."):
            return None
        rel = fullname[len(self.package) + 1:].replace(".", "/")
        for name, is_package in (((f"{rel}/" if rel else "") + "__init__.py", True), (f"{rel}.py", False)):
            if name in self.sources:
                self.paths[fullname] = str(self.root / name)
                location = [str(self.root / rel)] if is_package else None
                return importlib.util.spec_from_file_location(fullname, self.paths[fullname], loader=self,
                                                              submodule_search_locations=location)
        return None

    def get_filename(self, fullname):
        return self.paths[fullname]

    def get_data(self, path):
        rel = Path(path).relative_to(self.root).as_posix()
        if rel not in self.sources:  # e.g. a .pyc: there is none, the verified source is compiled
            raise OSError(f"{path} is not part of the verified code")
        return self.sources[rel]


def import_shipped_engine(code_dir: str | Path, code_sha256: dict[str, str]) -> ModuleType:
    """The model's own ``code/gan_core``, verified against ``code_sha256`` and imported under its private
    package name; returns that package (its submodules import lazily as usual: ``.config``, ...).

    Raises ModelIntegrityError naming the first file that is modified, missing or not recorded.
    """
    shipped = code_files(code_dir)
    for name in sorted(set(shipped) | set(code_sha256)):
        if name not in shipped:
            raise ModelIntegrityError(f"generator model code file code/{name} is missing; refusing to load it")
        if name not in code_sha256:
            raise ModelIntegrityError(f"generator model code file code/{name} was not shipped with the model "
                                      f"(no sha256 recorded); refusing to load it")
    sources = {}
    for name, path in shipped.items():
        data = path.read_bytes()  # hashed and then compiled from these same bytes
        actual = hashlib.sha256(data).hexdigest()
        if actual != code_sha256[name]:
            raise ModelIntegrityError(
                f"generator model code file code/{name} has been modified: sha256 {actual} does not match "
                f"{code_sha256[name]} recorded when the model was logged; refusing to load it")
        sources[name[len(CODE_PACKAGE) + 1:]] = data
    package = PRIVATE_PACKAGE_PREFIX + code_digest(code_sha256)[:16]
    if package not in sys.modules:  # the same verified code may already be imported (another version)
        if not any(isinstance(f, _VerifiedPackage) and f.package == package for f in sys.meta_path):
            sys.meta_path.insert(0, _VerifiedPackage(package, Path(code_dir) / CODE_PACKAGE, sources))
        importlib.import_module(package)
    return sys.modules[package]


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """G_ema from a state dict, mapping latents (or a seed range) to samples in data units."""

    def load_context(self, context):
        import torch

        cfg = dict(context.model_config or {})
        if cfg.get("format") != FORMAT:
            raise ModelIntegrityError(f"not a ganpipe generator model (model_config format = "
                                      f"{cfg.get('format')!r}, expected {FORMAT!r})")
        # 1. integrity: every file must hash to what was recorded at logging time
        expected = cfg.get("sha256") or {}
        for key in sorted({WEIGHTS, CONFIG} | set(expected)):  # plus the exports, if any
            path = context.artifacts.get(key)
            if path is None or not Path(path).is_file():
                raise ModelIntegrityError(f"generator model is missing its {key!r} file ({path})")
            actual = _sha256_file(path)
            if actual != expected.get(key):
                raise ModelIntegrityError(
                    f"generator model file {Path(path).name} has been modified: sha256 {actual} does not "
                    f"match {expected.get(key)} recorded when the model was logged; refusing to load it")
        if not cfg.get(CODE_SHA256):
            raise ModelIntegrityError(f"generator model has no {CODE_SHA256!r} in its model_config; "
                                      f"refusing to run code that was not checksummed")
        # 2. the engine this version shipped (code/ beside artifacts/), under its private package name
        engine = import_shipped_engine(Path(context.artifacts[WEIGHTS]).parent.parent / "code", cfg[CODE_SHA256])
        self.engine = engine.__name__
        config = importlib.import_module(f"{self.engine}.config")
        data = importlib.import_module(f"{self.engine}.data")
        networks = importlib.import_module(f"{self.engine}.networks")
        self.sampling = importlib.import_module(f"{self.engine}.sampling")
        # 3. rebuild G from the config and load the EMA weights without executing pickled code
        self.config = config.GANConfig.from_dict(json.loads(Path(context.artifacts[CONFIG]).read_text()))
        self.device = torch.device(cfg.get("device") or "cpu")
        G = networks.build_generator(self.config)
        state = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        G.load_state_dict(state)
        self.G = G.to(self.device).eval().requires_grad_(False)
        self.normalisation = data.Normalisation.from_dict(cfg.get("normalisation"))

    @property
    def num_classes(self) -> int:
        """K for a class-conditional generator, 0 for an unconditional one."""
        return int(getattr(self.G, "num_classes", 0) or 0)

    def to_data_range(self, x):
        """G's outputs (torch, any device) -> float32 numpy in the data's own units:
        (x - offset) / scale (model value = data value * scale + offset)."""
        return self.normalisation.to_data(x.float().cpu()).numpy()

    # what a caller (the batch sampler) checks before asking this version for truncated samples: versions
    # logged before truncated sampling lack it and refuse the request
    SUPPORTS_TRUNCATION = True
    # likewise for class-conditional sampling (a class label per request)
    SUPPORTS_CLASS_LABEL = True

    def sample(self, num_samples: int, seed: int, *, start: int = 0, batch_size: int = 1024,
               truncation: float | None = None, class_label: int | None = None) -> np.ndarray:
        """Samples [start, start + num_samples) of ``seed``, float32 (num_samples, *shape) in data units,
        drawn with this version's own engine (its ``sampling.generate``); ``batch_size`` only bounds memory.
        ``truncation``: None or 0 (off) or a threshold psi > 0 on |z_j| (the truncation trick);
        ``class_label``: one class k of a class-conditional G, or None (class-balanced); ValueError
        otherwise."""
        kwargs = {} if class_label is None else {"class_label": class_label}
        x = self.sampling.generate(self.G, num_samples, seed, start=start, batch_size=batch_size, device=self.device,
                                   truncation=truncation, **kwargs)
        return self.to_data_range(x)

    def _class_label(self, params: dict[str, Any]) -> int | None:
        """params["label"] as a class for `sample` (None: class-balanced); ValueError naming what is accepted."""
        label = params.get("label")
        if label is None or (not isinstance(label, bool) and isinstance(label, (int, np.integer)) and label == -1):
            return None
        try:
            return self.sampling.check_class_label(label, self.num_classes)
        except ValueError as e:
            raise ValueError(f"predict: params label: {e} (or -1 for class-balanced samples)") from None

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        params = params or {}
        num_samples = int(params.get("num_samples") or 0)
        z, labels = _as_latents(model_input, self.G.z_dim, self.num_classes)
        if num_samples or z is None:
            seed, start = int(params.get("seed") or 0), int(params.get("start") or 0)
            limit = self.sampling.MAX_NUM_SAMPLES
            if z is not None and len(z):
                raise ValueError(f"predict: pass latents z or params num_samples, not both (got z of shape "
                                 f"{tuple(z.shape)} and num_samples={num_samples})")
            if z is None and not num_samples:
                raise ValueError(f"predict: no input; accepted: latents z float32 of shape (n, {self.G.z_dim}), or "
                                 f"None with params {{'num_samples': n, 'seed': s}} (1 <= n <= {limit})")
            if not 1 <= num_samples <= limit:
                raise ValueError(f"predict: params num_samples={num_samples} is out of range; accepted: 1 to "
                                 f"{limit} (gan_core.sampling.MAX_NUM_SAMPLES), or latents z float32 (n, "
                                 f"{self.G.z_dim}) instead")
            if start < 0:
                raise ValueError(f"predict: params start={start} must be >= 0 (the first sample index)")
            truncation = params.get("truncation")
            try:
                truncation = self.sampling.check_truncation(truncation)
            except ValueError as e:
                raise ValueError(f"predict: params {e}") from None
            return self.sample(num_samples, seed, start=start, truncation=truncation,
                               class_label=self._class_label(params))
        if params.get("truncation"):
            raise ValueError(f"predict: params truncation={params['truncation']!r} applies to seed-addressed "
                             f"sampling (params num_samples), not to latents z given as input")
        if params.get("label") not in (None, -1):
            raise ValueError(f"predict: params label={params['label']!r} applies to seed-addressed sampling "
                             f"(params num_samples); with latents give one label per row: {{'z': z, 'label': labels}}")

        def forward(i: int):
            zi = z[i:i + PREDICT_CHUNK_ROWS].to(self.device)
            if labels is None:
                return self.G(zi).float().cpu()
            return self.G(zi, labels[i:i + PREDICT_CHUNK_ROWS].to(self.device)).float().cpu()

        with torch.no_grad():
            out = [forward(i) for i in range(0, len(z), PREDICT_CHUNK_ROWS)]
        x = torch.cat(out) if out else torch.empty((0, *self.config.data.shape))
        return self.to_data_range(x)


def _as_latents(model_input, z_dim: int, num_classes: int = 0):
    """(latents as a float32 tensor (n, z_dim), labels int64 (n,) or None), or (None, None) for no input.
    A class-conditional generator (num_classes > 0) takes ``{"z": z, "label": labels}``. Errors name
    the dtype and shape, never the values (an input can be large)."""
    import torch

    if model_input is None:
        return None, None
    labels = None
    if hasattr(model_input, "to_numpy"):  # a pandas DataFrame (e.g. from the scoring server)
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):  # {"z": array} or {"z": array, "label": array}
        if "label" in model_input:
            labels = model_input["label"]
        model_input = model_input["z"] if "z" in model_input else next(iter(model_input.values()))
    z = np.asarray(model_input)
    accepted = (f"accepted: latents z float32 of shape (n, {z_dim}), or None with params "
                f"{{'num_samples': n, 'seed': s}}")
    if num_classes:
        accepted = (f"accepted: {{'z': z float32 (n, {z_dim}), 'label': int64 (n,) in [0, {num_classes})}}, "
                    f"or None with params {{'num_samples': n, 'seed': s, 'label': k or -1}}")
    if z.dtype == np.float64:  # JSON numbers arrive as float64; take them only if float32 holds them exactly
        z32 = z.astype(np.float32)
        if not np.array_equal(z32, z, equal_nan=True):
            raise ValueError(f"predict: latents z are float64 of shape {z.shape} and not exactly float32 values; "
                             f"{accepted} (cast with z.astype(np.float32))")
        z = z32
    if z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != z_dim:
        raise ValueError(f"predict: latents z are {z.dtype} of shape {z.shape}; {accepted}")
    if not np.isfinite(z).all():  # G maps them to NaN images without a word
        bad = np.argwhere(~np.isfinite(z))[0]
        raise ValueError(f"predict: latents z hold a non-finite value ({z[tuple(bad)]} at row {bad[0]}, column "
                         f"{bad[1]}); accepted: finite float32 latents")
    if num_classes == 0:
        if labels is not None:
            raise ValueError("predict: labels given to an unconditional generator; " + accepted)
        return torch.from_numpy(np.ascontiguousarray(z)), None
    if labels is None:
        if len(z) == 0:
            return torch.from_numpy(z), None
        raise ValueError(f"predict: a class-conditional generator needs a label per latent; {accepted}")
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(z),) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"predict: labels are {y.dtype} of shape {y.shape}"
                         + (f" in [{y.min()}, {y.max()}]" if y.size and np.issubdtype(y.dtype, np.number) else "")
                         + f"; {accepted}")
    return torch.from_numpy(np.ascontiguousarray(z)), torch.from_numpy(y.astype(np.int64))


mlflow.models.set_model(GeneratorModel())
