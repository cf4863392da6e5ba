"""Networks: MLP and convolutional encoders/decoders, chosen by name, for flat or image data."""

import math

import pytest
import torch

import pvae
from pvae.models.nets import (
    MLP,
    NETWORKS,
    ConvDecoder,
    ConvEncoder,
    GaussianEncoder,
    MLPDecoder,
    make_networks,
)

# Tiny networks: one thread is faster, and immune to other processes on a shared CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlp_depth_width_and_activation_are_configurable():
    net = MLP(5, [7, 9, 11], 3, activation="elu")
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(5, 7), (7, 9), (9, 11), (11, 3)]
    assert sum(isinstance(m, torch.nn.ELU) for m in net) == 3
    assert len(MLP(5, [], 3)) == 1  # no hidden layer: one linear map


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_conv_encoder_and_decoder_shapes_for_flat_and_image_batches(image_shape):
    encoder = ConvEncoder(image_shape, 6, channels=[4, 8], hidden_dims=[16], context_dim=5)
    x_dim = math.prod(image_shape)
    for x in (torch.rand(7, x_dim), torch.rand(7, *image_shape)):
        loc, scale, context = encoder(x)
        assert loc.shape == scale.shape == (7, 6) and context.shape == (7, 5)
    decoder = ConvDecoder(6, image_shape, channels=[4, 8], hidden_dims=[16], params_per_dim=2)
    # Particles on the left of the datapoints, as the IWAE objectives put them.
    assert decoder(torch.randn(3, 7, 6)).shape == (3, 7, 2 * image_shape[0], *image_shape[1:])


def test_conv_encoder_treats_flat_and_image_layouts_alike():
    encoder = ConvEncoder((1, 8, 8), 2, channels=[4], hidden_dims=[])
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(encoder(x)[0], encoder(x.reshape(5, 64))[0])
    mlp = GaussianEncoder(64, 2, hidden_dims=[8])  # flattens images
    assert torch.equal(mlp(x)[0], mlp(x.reshape(5, 64))[0])


def test_conditional_networks_broadcast_the_label_over_particles():
    encoder = GaussianEncoder(6, 2, hidden_dims=[8], cond_dim=3)
    decoder = MLPDecoder(2, 6, hidden_dims=[8], cond_dim=3)
    y = torch.eye(3)[[0, 2]]
    loc, _ = encoder(torch.rand(2, 6), y)
    assert loc.shape == (2, 2)
    assert decoder(torch.randn(4, 2, 2), y).shape == (4, 2, 6)
    conv = ConvDecoder(2, (1, 4, 4), channels=[2], hidden_dims=[], cond_dim=3)
    assert conv(torch.randn(4, 2, 2), y).shape == (4, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="needs a condition of size 3"):
        decoder(torch.randn(2, 2))


def conv_vae(**kwargs):
    sizes = dict(z_dim=2, hidden_dims=[16], image_shape=[1, 8, 8], channels=[4, 8])
    return pvae.build_vae(64, network="conv", **sizes, **kwargs)


def test_a_conv_vae_on_flat_data_trains_and_gives_a_finite_iwae_bound():
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.bernoulli(torch.full((4, 64), 0.5), generator=generator)
    x = torch.bernoulli(0.1 + 0.8 * prototypes[torch.arange(64) % 4], generator=generator)
    vae = conv_vae()
    result = pvae.fit(
        vae.model, vae.guide, x, num_epochs=8, batch_size=32, learning_rate=1e-2, seed=0
    )
    bounds = [stats.train_bound for stats in result.history]
    assert all(math.isfinite(b) for b in bounds) and bounds[-1] > bounds[0], bounds
    bound = pvae.log_likelihood(vae.model, vae.guide, x, 20, seed=0)
    assert torch.isfinite(bound.per_datapoint).all()
    assert vae.sample(3).shape == (3, 64) and vae.reconstruct(x[:3]).shape == (3, 64)
    # Image-shaped data work with the same networks, and reconstruct in their own shape.
    images = x.reshape(-1, 1, 8, 8)
    pvae.fit(vae.model, vae.guide, images, num_epochs=1, batch_size=32)
    assert vae.reconstruct(images[:3]).shape == (3, 1, 8, 8)


def test_decoder_blocks_become_the_likelihoods_parameters_in_the_datas_layout():
    # Discretized logistic: 2 numbers per pixel; a conv decoder gives [..., 2, 8, 8], the
    # flat data want [..., 2 * 64] with all locations first.
    vae = conv_vae(likelihood="discretized_logistic")
    z = torch.randn(5, 2)
    out = vae.decoder(z)
    params = vae._likelihood_params(z, (), torch.Size([64]))
    assert params.shape == (5, 128)
    assert torch.equal(params[:, :64], out[:, 0].reshape(5, 64))
    assert torch.equal(params[:, 64:], out[:, 1].reshape(5, 64))
    d = vae.likelihood(params, event_dim=1)
    assert torch.equal(d.base_dist.loc, out[:, 0].reshape(5, 64))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: make_networks("resnet", 4, 2),
            "unknown network 'resnet': choose one of mlp, conv",
        ),
        (lambda: pvae.build_vae(784, network="conv"), "conv network needs image-shaped data"),
        (
            lambda: pvae.build_vae(100, network="conv", image_shape=[1, 28, 28]),
            r"has 784 values per image but x_dim is 100",
        ),
        (
            lambda: pvae.build_vae(27 * 27, network="conv", image_shape=[1, 27, 27]),
            "image sides divisible by 4, got 27x27",
        ),
        (lambda: pvae.build_vae(4, activation="swish"), "unknown activation 'swish'"),
        (lambda: GaussianEncoder(4, 2)(torch.rand(3, 5)), "takes datapoints of 4 values"),
    ],
)
def test_bad_network_choices_get_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_every_network_is_registered():
    assert set(NETWORKS) == {"mlp", "conv"}
