"""Property: whatever a .pt file holds, the checkpoint readers return a valid result or raise
one ValueError of one line that names the file, never a KeyError, TypeError, ..."""

import copy
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pvae
from pvae.errors import TrainingDiverged
from pvae.infer.checkpoint import FORMAT, FORMAT_VERSION
from pvae.models.custom_parts import REGISTRIES

X_DIM = 4
KEYS = ["format", "format_version", "model_args", "model", "custom_parts", "params",
        "optimizer", "training", "rng", "config", "epoch", "x_dim", "likelihood", "history",
        "state", "param_groups", "order", "loss_sum", "torch", "python", "numpy"]  # fmt: skip


def genuine_state():
    """A checkpoint of pvae.fit with the VAE's architecture: the start of every mutation."""
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[3])
    x = torch.bernoulli(torch.full((8, X_DIM), 0.5))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.pt"
        pvae.fit(vae.model, vae.guide, x, num_epochs=1, batch_size=4, checkpoint_path=path,
                 checkpoint_extra=lambda: pvae.vae_state(vae))  # fmt: skip
        return torch.load(path, weights_only=True)


GENUINE = genuine_state()

tensors = st.builds(
    lambda shape, fill, dtype: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 3), max_size=2).map(tuple),
    st.floats(-3, 3),
    st.sampled_from([torch.float32, torch.int64, torch.bool]),
)
leaves = (
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats() | st.text(max_size=6)
    | st.sampled_from(KEYS) | tensors
)  # fmt: skip
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value, prefix=()):
    """Every place in a (nested) checkpoint: dict keys and list positions."""
    places = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            places += paths(item, (*prefix, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            places += paths(item, (*prefix, index))
    return places


PLACES = paths(GENUINE)


@st.composite
def mutated(draw):
    """The genuine checkpoint with one to three places deleted or replaced by anything."""
    state = copy.deepcopy(GENUINE)
    for _ in range(draw(st.integers(1, 3))):
        *parents, last = draw(st.sampled_from(PLACES))
        container = state
        for key in parents:
            try:
                container = container[key]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if isinstance(container, dict) and last in container:
                if draw(st.booleans()):
                    del container[last]
                else:
                    container[last] = draw(values)
            elif isinstance(container, list) and isinstance(last, int) and last < len(container):
                container[last] = draw(values)
    return state


records = st.dictionaries(
    st.sampled_from(["prior", "likelihood", "guide", "network", "decoder"]),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["bernoulli", "standard_normal", "mlp", "gaussian", "x"]),
            "module": st.sampled_from(["os", "subprocess", "pvae.models.likelihoods"])
            | st.text(max_size=8),
            "qualname": st.sampled_from(["system", "Popen", "BernoulliLikelihood"]),
        }
    ),
    max_size=3,
)
with_records = st.builds(lambda state, parts: {**state, "custom_parts": parts}, mutated(),
                         records | values)  # fmt: skip
arbitrary = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), values, max_size=6)
labelled = arbitrary.map(lambda d: {"format": FORMAT, "format_version": FORMAT_VERSION, **d})
contents = mutated() | with_records | labelled | arbitrary | values


def valid_or_one_clear_error(read, path):
    """``read(path)``'s result, or None after checking its error is one line naming path;
    either way, nothing is registered (let alone imported) because the file names it."""
    registered = {kind: dict(registry) for kind, registry in REGISTRIES.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a checkpoint of another number of processes
            return read(path)
    except ValueError as error:
        message = str(error)
        assert "\n" not in message, message
        assert str(path) in message, message
        return None
    finally:
        assert {kind: dict(registry) for kind, registry in REGISTRIES.items()} == registered


def resume(path):
    vae = pvae.build_vae(X_DIM, z_dim=2, hidden_dims=[3])
    x = torch.bernoulli(torch.full((8, X_DIM), 0.5))
    try:
        return pvae.fit(vae.model, vae.guide, x, batch_size=4, more_epochs=1, resume=path)
    except TrainingDiverged:  # a valid checkpoint (a byte of its weights flipped) may diverge
        return "diverged"


READERS = {
    "load_checkpoint": pvae.load_checkpoint,
    "load_vae": lambda path: pvae.load_vae(path)[0],
    "fit(resume=)": resume,
}


@pytest.mark.parametrize("reader", READERS)
@settings(max_examples=60, deadline=None, database=None)
@given(state=contents)
def test_any_saved_contents_load_or_give_one_clear_error(reader, state):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        torch.save(state, path)
        valid_or_one_clear_error(READERS[reader], path)


def damaged(cut: int) -> bytes:
    """The genuine file with a byte flipped (``cut`` even) or cut short (odd) at
    ``cut``/50 of its length."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(GENUINE, Path(folder) / "c.pt")
        raw = bytearray((Path(folder) / "c.pt").read_bytes())
    if cut % 2:
        return bytes(raw[: len(raw) * cut // 50])
    raw[len(raw) * cut // 50] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("reader", READERS)
@settings(max_examples=int(os.environ.get("PVAE_EXAMPLES", 30)), deadline=None, database=None)
@given(data=st.binary(max_size=200) | st.integers(0, 49).map(damaged))
def test_any_bytes_load_or_give_one_clear_error(reader, data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        path.write_bytes(data)
        valid_or_one_clear_error(READERS[reader], path)


def test_the_genuine_checkpoint_is_valid_for_every_reader(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(GENUINE, path)
    assert all(valid_or_one_clear_error(read, path) is not None for read in READERS.values())


def test_a_newer_format_says_to_upgrade(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({**GENUINE, "format_version": FORMAT_VERSION + 1, "pvae_version": "9.0"}, path)
    with pytest.raises(ValueError, match=r"written by a newer pvae 9.0 .*: upgrade pvae"):
        pvae.load_checkpoint(path)
