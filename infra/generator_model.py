"""The registered generator as an MLflow pyfunc, logged with MLflow's models-from-code.

MLflow copies this file into the model and runs it on load; nothing pickled is ever unpickled. The
model folder holds:

    artifacts/weights.pt    G_ema's state dict (torch.save; read back with weights_only=True)
    artifacts/config.json   the resolved GANConfig that rebuilds G
    code/gan_core/          the engine (pure PyTorch), so a consumer needs only mlflow + torch

and the pyfunc's ``model_config`` (in the MLmodel file) carries the sha256 of both files, the data
normalisation and the default device. Loading refuses files whose sha256 differs.

Contract (see infra/registry.py for the signature):
- ``predict(z)``: z float32 (n, z_dim) -> samples float32 (n, C, H, W) or (n, D) in the data's
  original value range, x_data = (G_ema(z) - offset) / scale.
- ``predict(None or empty, params={"num_samples": n, "seed": s, "start": i})``: samples
  [i, i + n) of seed s, addressed exactly as gan_core.sampling.generate (sample i depends only on
  (model, s, i)).

This file must import only mlflow, numpy, torch and gan_core: it runs inside consumers' processes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

FORMAT = "ganpipe-generator/1"
WEIGHTS = "weights"  # artifact keys
CONFIG = "config"
PREDICT_CHUNK_ROWS = 8192  # bounds memory for large latent inputs (rows are independent in eval mode)


class ModelIntegrityError(RuntimeError):
    """A model file's sha256 does not match the one recorded when the model was logged."""


def sha256_file(path: str | Path) -> str:
    # NOTE: not infra.storage.sha256_of (the project's one helper): this file runs in consumers'
    # processes, which have mlflow and torch but not pyarrow
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """G_ema from a state dict, mapping latents (or a seed range) to samples in data units."""

    def load_context(self, context):
        import torch

        from gan_core.config import GANConfig
        from gan_core.data import Normalisation
        from gan_core.networks import build_generator

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
            actual = sha256_file(path)
            if actual != expected.get(key):
                raise ModelIntegrityError(
                    f"generator model file {Path(path).name} has been modified: sha256 {actual} does not "
                    f"match {expected.get(key)} recorded when the model was logged; refusing to load it")
        # 2. rebuild G from the config and load the EMA weights without executing pickled code
        self.config = GANConfig.from_dict(json.loads(Path(context.artifacts[CONFIG]).read_text()))
        self.device = torch.device(cfg.get("device") or "cpu")
        G = build_generator(self.config)
        state = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        G.load_state_dict(state)
        self.G = G.to(self.device).eval().requires_grad_(False)
        self.normalisation = Normalisation.from_dict(cfg.get("normalisation"))

    def to_data_range(self, x):
        """G's outputs (torch, any device) -> float32 numpy in the data's own units:
        (x - offset) / scale (model value = data value * scale + offset)."""
        return self.normalisation.to_data(x.float().cpu()).numpy()

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        from gan_core.sampling import generate

        params = params or {}
        num_samples = int(params.get("num_samples") or 0)
        if num_samples > 0:
            x = generate(self.G, num_samples, int(params.get("seed") or 0), start=int(params.get("start") or 0),
                         device=self.device)
            return self.to_data_range(x)
        z = _as_latents(model_input, self.G.z_dim)
        with torch.no_grad():
            out = [self.G(z[i:i + PREDICT_CHUNK_ROWS].to(self.device)).float().cpu()
                   for i in range(0, len(z), PREDICT_CHUNK_ROWS)]
        x = torch.cat(out) if out else torch.empty((0, *self.config.data.shape))
        return self.to_data_range(x)


def _as_latents(model_input, z_dim: int):
    import torch

    if model_input is None:
        return torch.empty(0, z_dim)
    if hasattr(model_input, "to_numpy"):  # a pandas DataFrame (e.g. from the scoring server)
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):  # {"z": array}
        model_input = next(iter(model_input.values()))
    z = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
    if z.ndim != 2 or z.shape[1] != z_dim:
        raise ValueError(f"latents must have shape (n, {z_dim}); got {tuple(z.shape)}")
    return z


mlflow.models.set_model(GeneratorModel())
