"""FID with user-supplied Inception weights (config path and environment variable), and the fallback
feature space for images when none are given."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_core.config import ConfigError, get_preset
from gan_core.evaluate import evaluate_generator, feature_space, main, no_inception_note, primary_metric
from gan_core.metrics import FIDInceptionFeatures, RandomConvFeatures, extract_features
from pipelines.settings import FID_INCEPTION_ENV, resolve_settings

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeInception(nn.Module):
    """The calling convention of NVIDIA's FID network ``inception-2015-12-05.pt`` (StyleGAN2-ADA / StyleGAN3 /
    clean-fid): ``forward(x, return_features=True)``, x float (N, 3, H, W) in [0, 255] at any size, resized
    inside, returning (N, 2048) pool features.

    NOTE: it is not Inception-v3 itself: that architecture comes with torchvision, which cannot be installed
    beside this project's torch, and its weights cannot be downloaded here. A randomly initialised small
    conv net (resize to 75 x 75, two 3x3 stride-2 convs, a 1x1 conv to 2048 channels, average pool) checks
    the same plumbing: a TorchScript file on disk, the call, torchmetrics' FID, the metric names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool3 = nn.Conv2d(32, 2048, 1)

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = F.interpolate(x.to(torch.float32) / 127.5 - 1.0, size=(75, 75), mode="bilinear", align_corners=False)
        x = F.relu(self.pool3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "inception-2015-12-05.pt"
    torch.jit.script(FakeInception()).save(str(path))
    return path


def photo_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Real photographs: `n` random crops of scikit-learn's two sample images, (n, 3, size, size) in [-1, 1]."""
    from sklearn.datasets import load_sample_images

    photos = [torch.tensor(a).permute(2, 0, 1).float() for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % 2]
        side = int(rng.integers(64, 256))
        top, left = int(rng.integers(0, photo.shape[1] - side)), int(rng.integers(0, photo.shape[2] - side))
        crop = photo[None, :, top:top + side, left:left + side]
        out.append(F.interpolate(crop, size=(size, size), mode="area")[0])
    return (torch.stack(out) / 127.5 - 1.0).numpy()


class NoiseGenerator(nn.Module):
    """A generator that outputs uniform noise images in [-1, 1], seeded by z."""

    def __init__(self, shape):
        super().__init__()
        self.z_dim = 4
        self.shape = tuple(shape)

    def forward(self, z):
        g = torch.Generator().manual_seed(int(z[0, 0].abs().item() * 1e6))
        return torch.rand((len(z), *self.shape), generator=g) * 2 - 1


def image_config(size: int):
    return get_preset("dcgan32").with_overrides({"data.name": "photos", "data.shape": [3, size, size]})


def test_fid_from_the_config_path_floor_near_zero_against_noise(inception_file):
    settings = resolve_settings(preset="dcgan32-cpu", overrides=[f"evaluation.inception={inception_file}",
                                                                 f"source.uri={inception_file.parent}"])
    assert settings.evaluation.inception == str(inception_file)
    config = image_config(16)
    real = photo_crops(240, 16)
    extractor, classifier = feature_space(config, inception=settings.evaluation.inception)
    assert isinstance(extractor, FIDInceptionFeatures) and classifier is None and no_inception_note(extractor) is None
    lines = []
    result = evaluate_generator(NoiseGenerator((3, 16, 16)), config, real, feature_extractor=extractor,
                                kid_num_subsets=5, progress=lines.append)
    # torchmetrics' FID in the Inception features, under the name papers use
    assert primary_metric(result) == "fid" and "fd" not in result and result["feature_dim"] == 2048
    assert math.isfinite(result["fid"]) and math.isfinite(result["floor/fid"])
    assert 0 <= result["floor/fid"] < 0.05 * result["fid"]
    # the weights are recorded: file name and SHA-256 prefix
    assert extractor.name == f"inception:inception-2015-12-05.pt@sha256:{hashlib.sha256(inception_file.read_bytes()).hexdigest()[:12]}"
    assert any(extractor.name in line for line in lines)
    assert not any("no FID Inception weights" in line for line in lines)


def test_fid_runs_each_image_through_the_network_once_and_keeps_its_features(inception_file):
    # torchmetrics runs the network; the features it produced are handed back for KID and precision/recall
    from gan_core.metrics import frechet_inception_distances

    net = FIDInceptionFeatures(inception_file)
    calls = []
    net.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    real, other = torch.from_numpy(photo_crops(60, 16)), torch.rand(50, 3, 16, 16) * 2 - 1
    fid, f_real, f = frechet_inception_distances(net, real, {"noise": other, "real": real[:50]}, batch_size=32)
    assert sum(calls) == 60 + 50 + 50
    assert f_real.shape == (60, 2048) and f["noise"].shape == (50, 2048)
    assert torch.equal(f_real, extract_features(net, real)) and torch.equal(f["real"], f_real[:50])
    assert 0 <= fid["real"] < 0.2 * fid["noise"]
    # torchmetrics' FID and the project's Fréchet distance (used for fd) agree on the same features, up to
    # how each takes the square root of a rank-deficient product (50 samples in 2,048 dimensions: within
    # 0.6% of the noise's value)
    from gan_core.metrics.frechet import frechet_distance

    for name in ("noise", "real"):
        ours = frechet_distance(f[name], f_real)
        assert math.isclose(fid[name], ours, rel_tol=0.02, abs_tol=0.01 * fid["noise"]), (name, fid[name], ours)
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_inception_distances(net, real, {"one": other[:1]})


def test_fid_from_the_environment_variable_through_ganpipe_evaluate_and_the_gan_core_cli(
        inception_file, monkeypatch, tmp_path, capsys, digits_cache):
    from gan_core.data import InMemoryBatches, load_digits
    from gan_core.loop import train
    from pipelines.cli import main as ganpipe

    monkeypatch.setenv(FID_INCEPTION_ENV, str(inception_file))
    assert resolve_settings(preset="digits").evaluation.inception == str(inception_file)
    cfg = get_preset("digits").with_overrides({"network.g_width": 8, "network.d_width": 8,
                                               "train.global_batch_size": 32, "train.total_steps": 1})
    x, _ = load_digits()
    ckpt = train(cfg, batches=InMemoryBatches(x, 32, seed=0), checkpoint_root=tmp_path, diagnostics=False).checkpoint_dir
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(digits_cache))
    assert ganpipe(["evaluate", ckpt, "--num-samples", "100", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert math.isfinite(metrics["fid"]) and 0 <= metrics["floor/fid"] < metrics["fid"]
    assert metrics["features"].startswith("inception:inception-2015-12-05.pt@sha256:")
    # the gan_core entry point takes the file as a flag (a file of the wrong shape shows it reaches the loader)
    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    torch.jit.script(Wrong()).save(str(tmp_path / "wrong.pt"))
    assert main(["--checkpoint", ckpt, "--cache-dir", str(digits_cache), "--inception", str(tmp_path / "wrong.pt")]) == 2
    assert "wrong.pt: returned features of shape (2, 3)" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["config", "env", "flag"])
def test_a_missing_weights_file_is_one_line_naming_the_field(where, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main as ganpipe

    missing = str(tmp_path / "inception-2015-12-05.pt")
    if where == "config":
        with pytest.raises(ConfigError, match=r"^evaluation.inception: got .*inception-2015-12-05.pt.*existing"):
            resolve_settings(preset="digits", overrides=[f"evaluation.inception={missing}"])
    elif where == "env":
        monkeypatch.setenv(FID_INCEPTION_ENV, missing)
        with pytest.raises(ConfigError, match=rf"^{FID_INCEPTION_ENV}: got .*existing local file"):
            resolve_settings(preset="digits")
    else:
        assert ganpipe(["evaluate", str(tmp_path), "--inception", missing]) == 2
        err = capsys.readouterr().err
        assert "--inception" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_file_that_is_not_an_fid_network_is_refused(tmp_path):
    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
            return x.mean(dim=(2, 3))  # (N, 3), not (N, 2048)

    wrong = tmp_path / "wrong.pt"
    torch.jit.script(Wrong()).save(str(wrong))
    with pytest.raises(ValueError, match=r"wrong.pt: returned features of shape \(2, 3\).*\(2, 2048\)"):
        FIDInceptionFeatures(wrong)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a TorchScript archive")
    with pytest.raises(ValueError, match="junk.pt: not a TorchScript file"):
        FIDInceptionFeatures(junk)


# -- without weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_images_without_weights_never_use_raw_pixels(size):
    config = image_config(size)
    extractor, _ = feature_space(config)
    assert isinstance(extractor, RandomConvFeatures) and extractor.name == "random_conv256"
    real = photo_crops(40, size)
    lines = []
    result = evaluate_generator(NoiseGenerator((3, size, size)), config, real, kid_num_subsets=5,
                                progress=lines.append)
    # 256 features, not the 3 * size * size pixels (12,288 for 64 x 64 RGB)
    assert result["feature_dim"] == 256 < 1000 < 3 * size * size
    assert "fid" not in result and math.isfinite(result["fd"]) and result["floor/fd"] < result["fd"]
    note = [line for line in lines if "no FID Inception weights" in line]
    assert len(note) == 1 and "random_conv256" in note[0] and "GANPIPE_FID_INCEPTION" in note[0]


def test_the_no_weights_note_names_the_digits_classifier(digits_cache):
    extractor, clf = feature_space(get_preset("digits"), cache_dir=digits_cache)
    assert extractor is clf
    assert extractor.name in no_inception_note(extractor)
    assert no_inception_note(feature_space(get_preset("ring8"))[0]) is None  # vectors: FID means nothing there


def test_random_conv_features_are_fixed_by_the_seed_and_separate_photos_from_noise():
    a, b, other = RandomConvFeatures(seed=0), RandomConvFeatures(seed=0), RandomConvFeatures(seed=1)
    x = torch.from_numpy(photo_crops(8, 32))
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), other(x))
    # golden: the weights come from a seeded CPU generator, the same on every machine
    assert a.net[0].weight.flatten()[:3].tolist() == pytest.approx([-0.30046, -0.30754, -0.06687], abs=1e-4)
    assert a(torch.zeros(2, 1, 64, 64)).shape == (2, 256)  # grey, any resolution


def test_the_pipeline_report_names_fid_its_floor_ratio_and_the_weights(tmp_path):
    from pipelines.flow import report_markdown

    weights = "inception:inception-2015-12-05.pt@sha256:0123456789ab"
    summary = {"model_name": "ganpipe-photos", "version": "1", "model_uri": "models:/ganpipe-photos/1",
               "alias": "champion", "champion_version": "1", "decision": "promoted: first champion (fid=12)",
               "dataset_uri": str(tmp_path), "run_name": "gan-photos", "train_step": 1,
               "sample_grid": str(tmp_path / "grid.png"), "seconds": {"evaluation": 1.0},
               "metrics": {"fid": 12.0, "floor/fid": 3.0, "num_samples": 100.0}, "features": weights}
    text = report_markdown(summary)
    assert "| fid | 12 | 3 |" in text and f"FID is 4.00x its real-vs-real floor (100 samples per set; features: {weights})" in text
    summary["metrics"], summary["features"] = {"fd": 12.0, "floor/fd": 6.0, "num_samples": 100.0}, "random_conv256"
    assert "FD is 2.00x its real-vs-real floor (100 samples per set; features: random_conv256)" in report_markdown(summary)
