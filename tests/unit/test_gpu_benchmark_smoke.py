"""benchmarks/gpu/bench_gpu.py: its CPU smoke mode end to end (every figure finite and positive, the
engine's bf16 and channels_last switches really applied, nothing orchestration-side imported), the peak
table, what torch.compile may wrap, and bad input (one line, exit 2, nothing written)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import bench_gpu
from gan_core.config import get_preset
from gan_core.training import build_training_state, train_step

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("ray", "prefect", "mlflow", "boto3", "botocore", "pyarrow", "moto")
VARIANT_FIGURES = ("warmup_seconds", "train_steps", "train_seconds", "train_images_per_s", "step_ms",
                   "achieved_tflops", "peak_memory_train_bytes", "sample_images_per_s", "sample_batch_size",
                   "peak_memory_sample_bytes", "sample_achieved_tflops", "peak_tflops", "mfu", "sample_mfu")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run in a fresh interpreter: (exit status, the JSON, the top-level packages it loaded)."""
    out = tmp_path_factory.mktemp("bench-gpu") / "results.json"
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = ['bench_gpu', '--smoke', '--out', {str(out)!r}]\n"
        "try:\n"
        "    runpy.run_module('benchmarks.gpu.bench_gpu', run_name='__main__')\n"
        "    rc = 0\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "print(json.dumps({'rc': rc, 'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), report["modules"], proc.stdout


def test_smoke_reports_every_figure_finite_and_positive(smoke):
    result, _, _ = smoke
    assert result["mode"] == "smoke" and result["preset"] == "dcgan64"
    env = result["environment"]
    assert env["device_name"] == "cpu" and env["torch"] == torch.__version__ and "cuda" in env
    assert result["command"].startswith("python -m benchmarks.gpu.bench_gpu --smoke")
    assert set(result["variants"]) == {v.name for v in bench_gpu.VARIANTS}
    for name, figures in result["variants"].items():
        assert "error" not in figures, (name, figures.get("error"))
        bad = {k: figures.get(k) for k in VARIANT_FIGURES if not _positive(figures.get(k))}
        assert not bad, (name, bad)
    flops = result["flops"]
    for key in ("per_step", "G", "D", "per_image", "G_forward_per_image"):
        assert _positive(flops[key]), (key, flops)
    assert flops["per_step"] >= flops["G"] + flops["D"]
    for name, r in result["ratios"].items():
        assert _positive(r["train"]) and _positive(r["sample"]), (name, r)
    assert set(result["ratios"]) == {"bf16_channels_last/fp32_eager", "compile_bf16_channels_last/bf16_channels_last"}
    assert all(_positive(result["peak"][k]) for k in ("bf16", "tf32", "fp32"))
    assert _positive(result["total_seconds"])


def test_smoke_uses_the_engines_precision_and_memory_format_switches(smoke):
    result, _, _ = smoke
    v = result["variants"]
    assert (v["fp32_eager"]["amp"], v["fp32_eager"]["weights_channels_last"]) == ("off", False)
    for name in ("bf16_channels_last", "compile_bf16_channels_last"):
        assert (v[name]["amp"], v[name]["weights_channels_last"]) == ("bf16", True), name
        assert v[name]["peak_kind"] == "bf16"
    assert v["fp32_eager"]["peak_kind"] == "fp32"  # on a CPU: no TF32
    # dcgan64 has R1: the D update must stay eager, everything else compiled
    assert v["compile_bf16_channels_last"]["compiled"] == ["G", "D in the G update", "G_ema"]
    # the step's FLOPs are those of the smoke config: the ratio of achieved TFLOP/s to images/s is fixed
    per_image = result["flops"]["per_image"]
    for figures in v.values():
        assert figures["achieved_tflops"] * 1e12 == pytest.approx(figures["train_images_per_s"] * per_image)


def test_smoke_prints_the_table_with_ratios_and_targets(smoke):
    _, _, stdout = smoke
    assert "fp32 eager" in stdout and "bf16 + channels_last" in stdout and "compile (bf16 + CL)" in stdout
    assert "ratio bf16_channels_last/fp32_eager: train" in stdout and "(target >= 2.0x)" in stdout
    assert "(target >= 1.2x)" in stdout


def test_smoke_imports_no_orchestration_package(smoke):
    _, modules, _ = smoke
    assert "gan_core" in modules and "torch" in modules
    assert not [m for m in modules if m in FORBIDDEN]


def test_step_flops_match_the_dcgan_arithmetic():
    # D's first conv on the real and fake halves: 2 * B * (C_out * H * W) * (C_in * 3 * 3) multiply-adds x 2
    config = get_preset("dcgan64").with_overrides({**bench_gpu.SMOKE_OVERRIDES, "loss.r1_gamma": 0.0,
                                                    "network.d_spectral_norm": False})
    state = build_training_state(config)
    flops = bench_gpu.count_flops(state, bench_gpu.device_batches(config, torch.device("cpu")))
    B, (C, S, _), w = config.train.global_batch_size, config.data.shape, config.network.d_width
    first_conv_forward = 2 * (2 * B) * (w * S * S) * (C * 3 * 3)
    assert flops["D"] > first_conv_forward
    # without R1 or spectral norm every FLOP belongs to G or D, and more than the forward passes alone
    assert flops["other"] == 0 and flops["per_step"] == flops["G"] + flops["D"]
    assert flops["per_image"] == flops["per_step"] / B
    with_r1 = bench_gpu.count_flops(build_training_state(config.with_overrides({"loss.r1_gamma": 1.0})),
                                    bench_gpu.device_batches(config, torch.device("cpu")))
    assert with_r1["per_step"] > flops["per_step"]  # R1's double backward is counted


@pytest.mark.parametrize("r1_gamma, gp_lambda, d_update_compiled", [(0.2, 0.0, False), (0.0, 10.0, False),
                                                                     (0.0, 0.0, True)])
def test_compile_wraps_the_d_update_only_without_double_backward(r1_gamma, gp_lambda, d_update_compiled):
    config = get_preset("dcgan64").with_overrides({**bench_gpu.SMOKE_OVERRIDES, "loss.r1_gamma": r1_gamma,
                                                    "loss.gp_lambda": gp_lambda})
    state = build_training_state(config)
    D_eager = state.D
    D_update, compiled = bench_gpu.apply_compile(state, lambda m: torch.compile(m, backend="eager"))
    assert (D_update is not D_eager) == d_update_compiled
    assert ("D in the D update" in compiled) == d_update_compiled
    assert state.D is not D_eager and compiled[:3] == ["G", "D in the G update", "G_ema"]


def test_a_compiled_step_trains_the_engines_parameters(one_thread):
    config = get_preset("dcgan64").with_overrides({**bench_gpu.SMOKE_OVERRIDES, "loss.r1_gamma": 0.0})
    state = build_training_state(config)
    D_eager, G_eager = state.D, state.G
    try:
        D_update, _ = bench_gpu.apply_compile(state, lambda m: torch.compile(m, backend="eager"))
        # the compiled modules share the parameters the optimisers and G_ema's update hold
        assert [p.data_ptr() for p in state.G.parameters()] == [p.data_ptr() for p in G_eager.parameters()]
        before = [p.detach().clone() for p in (*D_eager.parameters(), *G_eager.parameters())]
        stats = train_step(state, bench_gpu.device_batches(config, torch.device("cpu")), state.G, D_update)
        assert all(torch.isfinite(v) for v in stats.values())
        after = (*D_eager.parameters(), *G_eager.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before, after) if a.dim() == 4)
        assert state.step == 1
    finally:
        torch.compiler.reset()


@pytest.mark.parametrize("device_name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA GH200 480GB", "GH200"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA A10", "A10"),
])
def test_peak_table_finds_the_card(device_name, card):
    peak = bench_gpu.peak_for(device_name)
    assert peak is not None and peak.card == card
    assert peak.bf16 == pytest.approx(2 * peak.tf32, rel=0.02) and peak.tf32 > peak.fp32 > 0
    assert peak.source.startswith("https://")


@pytest.mark.parametrize("device_name", ["NVIDIA A10G", "Tesla T4", "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB"])
def test_peak_table_does_not_guess_other_cards(device_name):
    assert bench_gpu.peak_for(device_name) is None


def test_peak_overrides():
    h100 = bench_gpu.peak_for("NVIDIA H100 80GB HBM3")
    assert bench_gpu.override_peak(h100, None, None) is h100
    p = bench_gpu.override_peak(h100, 900.0, None)
    assert (p.bf16, p.tf32, p.fp32) == (900.0, h100.tf32, h100.fp32) and "--peak-tflops" in p.source
    unknown = bench_gpu.override_peak(None, 100.0, None)
    assert (unknown.bf16, unknown.tf32, unknown.fp32) == (100.0, None, None)
    p = bench_gpu.override_peak(None, None, 50.0)
    assert (p.bf16, p.tf32, p.fp32) == (None, 50.0, 50.0)


@pytest.mark.parametrize("argv, names", [
    (["--seconds-per-variant", "0"], "--seconds-per-variant"),
    (["--seconds-per-variant", "-1"], "--seconds-per-variant"),
    (["--seconds-per-variant", "nan"], "--seconds-per-variant"),
    (["--sample-seconds", "inf"], "--sample-seconds"),
    (["--peak-tflops", "0"], "--peak-tflops"),
    (["--peak-tflops-fp32", "-5"], "--peak-tflops-fp32"),
    (["--warmup-steps", "0"], "--warmup-steps"),
    (["--sample-batch-size", "0"], "--sample-batch-size"),
    (["--threads", "0"], "--threads"),
    (["--batch-size", "0"], "train.global_batch_size"),
    (["--set", "network.nope=1"], "network.nope"),
    (["--set", "train.amp"], "--set 'train.amp'"),
    (["--set", "network.d_pack=3"], "train.global_batch_size"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, names, tmp_path, capsys):
    out = tmp_path / "sub" / "results.json"
    assert bench_gpu.main(["--smoke", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and names in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "sub").exists()


def test_out_must_be_a_writable_file_path(tmp_path, capsys):
    assert bench_gpu.main(["--smoke", "--out", str(tmp_path)]) == 2  # a folder
    assert "--out" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert bench_gpu.main(["--smoke", "--out", str(blocker / "results.json")]) == 2  # below a file
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_only_smoke_runs(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.bench_gpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no CUDA device") and "--smoke" in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_smoke_runs_r3gan_with_its_loss_and_both_penalties(tmp_path):
    """R3GAN beside DCGAN: the r3gan32 preset (RpGAN + R1 + R2, normalisation-free ResNets) in smoke mode."""
    out = tmp_path / "r3gan.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.bench_gpu", "--smoke", "--preset", "r3gan32",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["preset"] == "r3gan32"
    for name, variant in result["variants"].items():
        assert all(_positive(variant[k]) for k in ("train_images_per_s", "achieved_tflops", "sample_images_per_s")), name
    assert bench_gpu.needs_double_backward(get_preset("r3gan32").with_overrides({"loss.r1_gamma": 0.0, "loss.r1_gamma_final": 0.0}))  # R2 alone
