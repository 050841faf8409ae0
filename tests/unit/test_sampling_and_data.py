import numpy as np
import pytest
import torch

from gan_core.config import get_preset
from gan_core.data import InMemoryBatches, load_digits, mixture, mode_coverage, sample_mixture
from gan_core.networks import build_generator
from gan_core.sampling import generate, latents_for_range, save_image_grid


def test_latents_are_addressed_by_index():
    whole = latents_for_range(seed=7, start=0, count=3000, z_dim=4)
    torch.testing.assert_close(latents_for_range(7, 1500, 700, 4), whole[1500:2200], rtol=0, atol=0)
    assert not torch.equal(latents_for_range(8, 0, 10, 4), whole[:10])


@pytest.mark.parametrize("batch_size", [1, 100, 1024, 4096])
def test_generate_is_independent_of_batch_size_and_partition(batch_size):
    cfg = get_preset("digits")
    G = build_generator(cfg).eval()
    ref = generate(G, 2500, seed=3, batch_size=2048)
    got = torch.cat([generate(G, 900, seed=3, start=0, batch_size=batch_size),
                     generate(G, 1600, seed=3, start=900, batch_size=batch_size)])
    assert torch.equal(ref, got)


def test_digits_are_scaled_and_labelled():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))


@pytest.mark.parametrize("name,k,sigma", [("ring8", 8, 0.01), ("grid25", 25, 0.05)])
def test_mixtures_and_mode_coverage_of_real_data(name, k, sigma):
    m = mixture(name)
    assert m.centres.shape == (k, 2) and m.sigma == sigma
    x, modes = sample_mixture(name, 2500, seed=0)
    cov = mode_coverage(x, name)
    assert cov["modes_covered"] == k
    # the radius of a 2-D Gaussian is Rayleigh: P(r <= 3 sigma) = 1 - exp(-9/2) = 0.9889
    assert cov["high_quality_fraction"] == pytest.approx(1 - np.exp(-4.5), abs=0.006)
    assert cov["reverse_kl"] < 0.05


def test_ring8_centres_are_at_distinct_angles_on_the_unit_circle():
    c = mixture("ring8").centres
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0)
    angles = np.sort(np.mod(np.arctan2(c[:, 1], c[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 8)


def test_mode_coverage_of_a_collapsed_generator():
    centre = mixture("ring8").centres[2]
    collapsed = centre + 0.005 * np.random.default_rng(0).standard_normal((2500, 2))
    cov = mode_coverage(collapsed, "ring8")
    assert cov["modes_covered"] == 1 and cov["high_quality_fraction"] == 1.0
    assert cov["reverse_kl"] == pytest.approx(np.log(8))
    far = mode_coverage(np.full((10, 2), 10.0), "ring8")
    assert far["modes_covered"] == 0 and far["high_quality_fraction"] == 0 and far["reverse_kl"] == float("inf")


def test_in_memory_batches_union_over_ranks_is_the_global_batch_and_resumes():
    x = torch.arange(100).float()[:, None]
    one = InMemoryBatches(x, 20, seed=1)
    two = [InMemoryBatches(x, 20, seed=1, rank=r, world_size=2) for r in range(2)]
    s1, s2 = one(0), [b(0) for b in two]
    for _ in range(12):  # crosses epoch boundaries (5 batches per epoch)
        assert torch.equal(next(s1), torch.cat([next(s) for s in s2]))
    resumed = one(7)
    full = one(0)
    for _ in range(7):
        next(full)
    for _ in range(5):
        assert torch.equal(next(resumed), next(full))


def test_image_grid_png(tmp_path):
    from PIL import Image

    path = save_image_grid(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "g.png")
    img = Image.open(path)
    assert img.mode == "L" and img.width >= 4 * 8
