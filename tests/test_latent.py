import math

import pytest
import torch

import pvae
from pvae.analysis.latent import (
    interpolate,
    latent_activity,
    lerp,
    principal_components,
    slerp,
    traverse,
)


def test_slerp_follows_the_great_circle_at_constant_angular_speed():
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    t = torch.linspace(0, 1, 7)
    path = slerp(e0, e1, t)
    expected = torch.stack([torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2), 0 * t], -1)
    torch.testing.assert_close(path, expected)


def test_slerp_keeps_the_norm_of_codes_of_equal_norm_and_ends_at_both_codes():
    torch.manual_seed(0)
    z0, z1 = torch.randn(5, 20), torch.randn(5, 20)
    z1 = z1 * (z0.norm(dim=-1, keepdim=True) / z1.norm(dim=-1, keepdim=True))
    path = slerp(z0, z1, torch.linspace(0, 1, 9))
    assert path.shape == (5, 9, 20)
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, -1], z1)
    norms = path.norm(dim=-1)
    torch.testing.assert_close(norms, norms[:, :1].expand_as(norms))
    # The straight line between the same codes dips inside the sphere.
    assert (lerp(z0, z1, torch.tensor([0.5])).norm(dim=-1) < norms[:, :1] - 1e-3).all()
    # Equal angles between consecutive steps.
    cosines = torch.nn.functional.cosine_similarity(path[:, 1:], path[:, :-1], dim=-1)
    torch.testing.assert_close(cosines, cosines[:, :1].expand_as(cosines))


def test_slerp_of_parallel_antiparallel_or_zero_codes_is_the_straight_line():
    t = torch.linspace(0, 1, 5)
    z = torch.tensor([1.0, 2.0])
    for other in (3 * z, -z, torch.zeros(2)):
        path = slerp(z, other, t)
        assert torch.isfinite(path).all()
        if other.norm() > 0:
            torch.testing.assert_close(path, lerp(z, other, t))
        torch.testing.assert_close(path[-1], other)


def test_interpolate_includes_both_ends_and_checks_its_arguments():
    z0, z1 = torch.zeros(3), torch.ones(3)
    path = interpolate(z0, z1, 4, "linear")
    torch.testing.assert_close(path[:, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="unknown interpolation"):
        interpolate(z0, z1, 4, "cubic")
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(z0, z1, 1)


def test_traverse_varies_one_dimension_per_row():
    z = torch.tensor([0.5, -0.5, 2.0])
    codes = traverse(z, torch.tensor([-1.0, 0.0, 1.0]), dims=[2, 0])
    assert codes.shape == (2, 3, 3)
    torch.testing.assert_close(codes[0, :, 2], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(codes[0, :, :2], z[:2].expand(3, 2))
    torch.testing.assert_close(codes[1, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert traverse(z, torch.zeros(2)).shape == (3, 2, 3)


def test_latent_activity_is_the_variance_of_the_posterior_means():
    x = torch.randn(2500, 4)

    def encode(batch):  # dimension 0 copies the data, dimension 1 ignores it
        return torch.stack([batch[:, 0], torch.zeros(len(batch))], -1), torch.ones(len(batch), 2)

    activity = latent_activity(encode, x, batch_size=1000)
    torch.testing.assert_close(activity, torch.stack([x[:, 0].var(), torch.tensor(0.0)]))
    vae = pvae.build_vae(4, z_dim=3, hidden_dims=[8])
    assert latent_activity(vae.encode, x).shape == (3,)


def test_principal_components_recover_the_axis_of_largest_variance():
    torch.manual_seed(0)
    z = torch.randn(1000, 3) * torch.tensor([5.0, 1.0, 0.1])
    projected, explained = principal_components(z)
    assert projected.shape == (1000, 2)
    assert abs(torch.corrcoef(torch.stack([projected[:, 0], z[:, 0]]))[0, 1]) > 0.99
    assert 0.9 < explained[0] < 1 and explained[0] > explained[1]


def test_principal_components_are_the_covariances_eigenvectors_with_a_fixed_sign():
    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    z = torch.randn(300, 4, generator=generator, dtype=torch.float64) @ mixing + 3.0
    state = torch.random.get_rng_state()
    projected, explained = principal_components(z, num_components=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    # Exact answer: the eigen-decomposition of the sample covariance.
    centred = z - z.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    torch.testing.assert_close(explained, eigenvalues[:3] / eigenvalues.sum(), rtol=1e-10, atol=0)
    for k in range(3):  # the same axis; the sign makes the largest coefficient positive
        axis = eigenvectors[:, k] * eigenvectors[:, k][eigenvectors[:, k].abs().argmax()].sign()
        torch.testing.assert_close(projected[:, k], centred @ axis, rtol=1e-8, atol=1e-8)
    again, _ = principal_components(-z, num_components=3)  # flipped data, same signs of axes
    torch.testing.assert_close(again, -projected, rtol=1e-8, atol=1e-8)
