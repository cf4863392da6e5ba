"""fit, log_likelihood and estimate_elbo take data in the forms users have: numpy arrays,
8-bit tensors with a transform, map-style datasets and data loaders, with the same numbers
as the tensors they stand for."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import pvae

X_DIM = 6


def binary_rows(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, X_DIM), 0.3), generator=generator)


class Rows(Dataset):
    """A map-style dataset that is not a TensorDataset: fit reads it item by item."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


class Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        yield from self.x


def trained(data, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pvae.build_vae(X_DIM, 2, [8])
    result = pvae.fit(vae.model, vae.guide, data, num_epochs=2, batch_size=16, seed=3, **options)
    return [s.train_bound for s in result.history], vae


@pytest.mark.parametrize(
    "as_user_data",
    [
        lambda x: x.numpy(),
        lambda x: Rows(x),
        lambda x: TensorDataset(x),
    ],
    ids=["numpy", "dataset", "tensor-dataset"],
)
def test_arrays_and_datasets_train_exactly_as_the_tensor_they_hold(as_user_data):
    x = binary_rows()
    expected, reference = trained(x)
    bounds, vae = trained(as_user_data(x))
    assert bounds == expected
    for a, b in zip(vae.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)


def test_8bit_data_stay_8bit_and_train_as_their_transformed_floats():
    grey = (torch.rand(64, X_DIM, generator=torch.Generator().manual_seed(1)) * 255).round()
    as_bytes = grey.to(torch.uint8)
    expected, _ = trained(grey / 255, transform=pvae.data.DynamicBinarization())
    bounds, _ = trained(
        as_bytes, transform=lambda b: pvae.data.DynamicBinarization()(b.float() / 255)
    )
    assert bounds == expected


def test_8bit_data_without_a_transform_and_bad_transformed_rows_are_refused():
    as_bytes = torch.full((32, X_DIM), 3, dtype=torch.uint8)
    vae = pvae.build_vae(X_DIM, 2, [8])
    with pytest.raises(ValueError, match="pass transform=lambda batch: batch.float.. / 255"):
        pvae.fit(vae.model, vae.guide, as_bytes, num_epochs=1)
    # the transform forgot to binarize: the Bernoulli likelihood names the rows it saw
    with pytest.raises(ValueError, match=r"data\[0:32\] as transformed: .*binary data"):
        pvae.fit(vae.model, vae.guide, as_bytes, num_epochs=1, transform=lambda b: b / 255)


def gaussian_mean_model(x):
    loc = pyro.param("loc", torch.zeros(X_DIM))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=x)


def empty_guide(x):
    pass


@pytest.mark.parametrize("iterable", [False, True], ids=["loader", "iterable-loader"])
def test_a_loaders_minibatches_are_scaled_to_the_whole_dataset(iterable):
    """With no latent and a learning rate too small to move, each step's loss is exactly the
    full data's -log p scaled from its minibatch; their mean is the per-datapoint value."""
    x = torch.randn(60, X_DIM, generator=torch.Generator().manual_seed(2))
    exact = dist.Normal(torch.zeros(X_DIM), 1.0).log_prob(x).sum(-1).mean().item()
    dataset = Stream(x) if iterable else TensorDataset(x)
    loader = DataLoader(dataset, batch_size=20)
    options = {"num_data": 60} if iterable else {}
    result = pvae.fit(
        gaussian_mean_model, empty_guide, loader, num_epochs=1, learning_rate=1e-12, **options
    )
    assert result.history[0].train_bound == pytest.approx(exact, rel=1e-5)
    assert result.num_steps == 3


def test_a_loader_over_a_dataset_without_len_needs_num_data():
    loader = DataLoader(Stream(torch.zeros(8, X_DIM)), batch_size=4)
    with pytest.raises(ValueError, match=r"without len\(\): pass num_data="):
        pvae.fit(gaussian_mean_model, empty_guide, loader, num_epochs=1)


def test_evaluation_takes_the_same_forms_as_training():
    x = binary_rows(20)
    vae = pvae.build_vae(X_DIM, 2, [8])
    reference = pvae.log_likelihood(vae.model, vae.guide, x, 10, seed=0).per_datapoint
    for data in (x.numpy(), Rows(x), DataLoader(TensorDataset(x), batch_size=7)):
        result = pvae.log_likelihood(vae.model, vae.guide, data, 10, seed=0)
        assert torch.equal(result.per_datapoint, reference)
    pyro.set_rng_seed(0)
    elbo = pvae.estimate_elbo(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    assert pvae.estimate_elbo(vae.model, vae.guide, Rows(x)) == elbo


def test_data_of_another_kind_get_one_clear_error():
    vae = pvae.build_vae(X_DIM, 2, [8])
    with pytest.raises(ValueError, match="must be a torch.Tensor, a numpy array, .* got list"):
        pvae.fit(vae.model, vae.guide, [[0.0] * X_DIM], num_epochs=1)
