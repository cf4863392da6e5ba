"""Small models with exact log p(x) for the AIS tests (float64, diagonal, cheap to run)."""

import math

import pyro
import pyro.distributions as dist
import torch


class DiagonalLinearGaussian:
    """z ~ N(0, I) or the mixture Σ_c π_c N(μ_c, diag s_c²) (its component c enumerated),
    x | z ~ N(Wz + b, σ² I): p(x) = Σ_c π_c N(W μ_c + b, W diag(s_c²) Wᵀ + σ² I).

    The guide is a deliberately poor diagonal Gaussian: the exact posterior's mean (of a
    N(0, I) prior) shifted by ``shift``, its marginal standard deviations times ``widen``.
    """

    def __init__(self, z_dim=2, x_dim=3, mixture=False, shift=1.0, widen=0.5, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x_dim, z_dim, generator=generator, dtype=torch.float64)
        self.b = torch.randn(x_dim, generator=generator, dtype=torch.float64)
        self.sigma, self.shift, self.widen = 0.5, shift, widen
        if mixture:
            self.weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
            self.locs = torch.tensor([[-2.0] + [0.0] * (z_dim - 1), [1.5] * z_dim]).double()
            self.scales = torch.tensor([[0.7] * z_dim, [0.5] * z_dim], dtype=torch.float64)
        else:
            self.weights = torch.ones(1, dtype=torch.float64)
            self.locs = torch.zeros(1, z_dim, dtype=torch.float64)
            self.scales = torch.ones(1, z_dim, dtype=torch.float64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            if len(self.weights) > 1:
                c = pyro.sample(
                    "c", dist.Categorical(self.weights), infer={"enumerate": "parallel"}
                )
                z = pyro.sample("z", dist.Normal(self.locs[c], self.scales[c]).to_event(1))
            else:
                z = pyro.sample("z", dist.Normal(self.locs[0], self.scales[0]).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        precision = torch.eye(self.W.shape[1], dtype=x.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov / self.sigma**2
        with pyro.plate("data", x.shape[0]):
            scale = cov.diagonal().sqrt() * self.widen
            pyro.sample("z", dist.Normal(mean + self.shift, scale).to_event(1))

    def exact_log_px(self, x):
        noise = self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        means = self.locs @ self.W.T + self.b
        covs = self.W @ torch.diag_embed(self.scales**2) @ self.W.T + noise
        per_component = dist.MultivariateNormal(means, covs).log_prob(x[:, None, :])
        return torch.logsumexp(self.weights.log() + per_component, dim=-1)

    def sample_data(self, num_data, seed=1):
        generator = torch.Generator().manual_seed(seed)
        c = torch.multinomial(self.weights, num_data, replacement=True, generator=generator)
        noise = torch.randn(num_data, self.W.shape[1], generator=generator, dtype=torch.float64)
        z = self.locs[c] + self.scales[c] * noise
        eps = torch.randn(num_data, self.W.shape[0], generator=generator, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * eps


class Wavy:
    """A 1-D model with a skewed posterior: z ~ N(0, 1), x | z ~ N(z + sin(3z), 0.4²); p(x) by
    quadrature."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z + torch.sin(3 * z), 0.4), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x, 1.5))

    def quadrature_log_px(self, x):
        z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
        joint = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z + torch.sin(3 * z), 0.4).log_prob(
            x[:, None]
        )
        return torch.logsumexp(joint, 1) + math.log(z[1] - z[0])


class GammaPoisson:
    """z ~ Gamma(a, b), x | z ~ Poisson(z): p(x) is negative binomial; z is positive, so HMC
    moves log z and the densities carry the log-Jacobian."""

    a, b = 3.0, 0.5

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(x.new_tensor(self.a), self.b))
            pyro.sample("x", dist.Poisson(z), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(x.new_zeros(()), 1.0).expand([x.shape[0]]))

    def exact_log_px(self, x):
        # torch's NegativeBinomial counts successes of probability p before a failures.
        return dist.NegativeBinomial(self.a, probs=1 / (1 + self.b)).log_prob(x)
