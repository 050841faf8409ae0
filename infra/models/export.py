"""The generator for consumers outside Python's eager PyTorch: a ``torch.export`` program and ONNX.

    export_generator(G_ema, out_dir, normalisation=Normalisation(scale, offset)) -> {"pt2": ExportResult, "onnx": ...}

Both artefacts take latents z float32 (n, z_dim) with a dynamic batch dimension and return samples in
the data's original value range, (G(z) - offset) / scale, exactly like the registered pyfunc. A
class-conditional generator's exports take a second input, ``label`` int64 (n,) in [0, K): G(z, label). Each is
checked against the eager generator on a fixed latent batch: the max abs difference must be within
``rtol`` (1e-4 by default) of the output's scale, max |eager output| — a tolerance relative to the data's
units, so that samples in pixel units [0, 255] get the same slack as samples in [-1, 1]
(`export_tolerance`). A mismatch raises `ExportMismatchError` with ``strict=True``; by default it is
logged as a warning and the format is reported as skipped, so that a finished training is never lost at
registration for an optional artefact (the pyfunc ships the eager weights either way). ONNX is produced
"where the ops allow": a generator whose ops the exporter cannot translate is reported as skipped, not as a
failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan_core.data import Normalisation
from gan_core.networks import apply
from gan_core.sampling import labels_for_range, latents_for_range, num_classes_of

log = logging.getLogger(__name__)

PT2_FILE = "generator.pt2"
ONNX_FILE = "generator.onnx"
DEFAULT_RTOL = 1e-4
CHECK_SEED = 12345
ONNX_OPSET = 18


class ExportMismatchError(RuntimeError):
    """An exported program's outputs differ from the eager generator's by more than the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    format: str  # "pt2" | "onnx"
    path: Path | None  # None when skipped
    max_abs_diff: float | None  # against eager on the check batch
    skipped_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.path is not None


class DataRangeGenerator(nn.Module):
    """G followed by the inverse data normalisation: x_data = (G(z) - offset) / scale."""

    def __init__(self, G: nn.Module, normalisation: Normalisation = Normalisation()):
        super().__init__()
        self.G = G
        self.z_dim = G.z_dim
        self.normalisation = normalisation

        self.num_classes = num_classes_of(G)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.normalisation.to_data(apply(self.G, z, label))


def _prepare(G: nn.Module, normalisation: Normalisation) -> nn.Module:
    return DataRangeGenerator(G, normalisation).cpu().eval().requires_grad_(False)


def _batch_dims(model: nn.Module):
    # NOTE: min=2 so that the exporter does not specialise the batch to 1 (0/1 specialisation).
    batch = torch.export.Dim("batch", min=2, max=1 << 20)
    return ({0: batch},) if not model.num_classes else ({0: batch}, {0: batch})


def _example(model: nn.Module, n: int = 4) -> tuple[torch.Tensor, ...]:
    """The inputs for n samples: (z,) or, for a class-conditional G, (z, class-balanced labels)."""
    z = latents_for_range(CHECK_SEED, 0, n, model.z_dim)
    return (z,) if not model.num_classes else (z, labels_for_range(0, n, model.num_classes))


def _input_names(model: nn.Module) -> list[str]:
    return ["z"] if not model.num_classes else ["z", "label"]


def export_pt2(G: nn.Module, path: str | Path, *, normalisation: Normalisation = Normalisation()) -> Path:
    """``torch.export`` G (with the data-range mapping) to a ``.pt2`` archive; load with torch.export.load."""
    model = _prepare(G, normalisation)
    program = torch.export.export(model, _example(model), dynamic_shapes=_batch_dims(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def export_onnx(G: nn.Module, path: str | Path, *, normalisation: Normalisation = Normalisation(),
                opset: int = ONNX_OPSET) -> Path:
    """ONNX through the dynamo exporter (onnxscript); input ``z`` (and ``label`` for a class-conditional
    G), output ``x``, dynamic batch."""
    model = _prepare(G, normalisation)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, _example(model), str(path), dynamo=True, opset_version=opset,
                      input_names=_input_names(model), output_names=["x"], dynamic_shapes=_batch_dims(model),
                      verbose=False, external_data=False)
    return path


def run_pt2(path: str | Path, z: torch.Tensor, label: torch.Tensor | None = None) -> np.ndarray:
    program = torch.export.load(str(path))
    with torch.no_grad():
        return (program.module()(z) if label is None else program.module()(z, label)).numpy()


def run_onnx(path: str | Path, z: torch.Tensor, label: torch.Tensor | None = None) -> np.ndarray:
    """Run with onnxruntime when installed, else with onnx's reference evaluator (slow but exact)."""
    feed = {"z": z.numpy().astype(np.float32)}
    if label is not None:
        feed["label"] = label.numpy().astype(np.int64)
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return np.asarray(ReferenceEvaluator(str(path)).run(None, feed)[0])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


def export_tolerance(expected: np.ndarray, rtol: float = DEFAULT_RTOL) -> float:
    """The largest max-abs difference an export may show against eager outputs ``expected`` (any shape,
    data units): ``rtol`` times their scale, max |expected| (0 for an empty or all-zero output)."""
    return float(rtol * np.max(np.abs(expected))) if expected.size else 0.0


def export_generator(G: nn.Module, out_dir: str | Path, *, normalisation: Normalisation = Normalisation(),
                     formats: tuple[str, ...] = ("pt2", "onnx"), rtol: float = DEFAULT_RTOL,
                     check_batch: int = 16, strict: bool = False) -> dict[str, ExportResult]:
    """Export G to each format under ``out_dir`` and check it against eager on ``check_batch`` latents.

    Returns {format: ExportResult}; a format whose check fails is skipped with a warning (its reason in
    ``skipped_reason``), or raises `ExportMismatchError` when ``strict``. Raises ValueError for an unknown
    format."""
    out_dir = Path(out_dir)
    eager = _prepare(G, normalisation)
    inputs = _example(eager, check_batch)  # differs from the tracing batch: exercises the dynamic dim
    with torch.no_grad():
        expected = eager(*inputs).numpy()
    results: dict[str, ExportResult] = {}
    for fmt in formats:
        if fmt == "pt2":
            path = export_pt2(G, out_dir / PT2_FILE, normalisation=normalisation)
            actual = run_pt2(path, *inputs)
        elif fmt == "onnx":
            try:
                path = export_onnx(G, out_dir / ONNX_FILE, normalisation=normalisation)
            except Exception as e:  # an op without an ONNX translation: ONNX is "where the ops allow"
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("ONNX export skipped: %s", reason)
                results[fmt] = ExportResult(fmt, None, None, reason)
                continue
            actual = run_onnx(path, *inputs)
        else:
            raise ValueError(f"export format: got {fmt!r}; allowed: pt2 | onnx")
        diff, mismatch = _compare(fmt, actual, expected, rtol, check_batch)
        if mismatch is None:
            results[fmt] = ExportResult(fmt, path, diff)
            continue
        if strict:
            raise ExportMismatchError(mismatch)
        log.warning("%s export not shipped: %s", fmt, mismatch)
        path.unlink(missing_ok=True)
        results[fmt] = ExportResult(fmt, None, diff, mismatch)
    return results


def _compare(fmt: str, actual: np.ndarray, expected: np.ndarray, rtol: float,
             check_batch: int) -> tuple[float | None, str | None]:
    """(max abs difference, None) when ``actual`` matches ``expected`` within `export_tolerance`, else
    (difference or None, the reason)."""
    if actual.shape != expected.shape:
        return None, f"{fmt} export of the generator returns shape {actual.shape}, eager returns {expected.shape}"
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    tolerance = export_tolerance(expected, rtol)
    if diff <= tolerance:
        return diff, None
    return diff, (f"{fmt} export differs from the eager generator: max abs difference {diff:.3g} > {tolerance:.3g} "
                  f"({rtol:g} of the output scale {float(np.max(np.abs(expected))):.3g}) on {check_batch} latents")
