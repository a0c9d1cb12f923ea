"""Step pieces: schedule, weight-decay mask, weighted cross-entropy, the FSDP rule, the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxla.layers.lightning import FixedDecay
from jaxla.testing import assert_close
from train.config import parse_args
from train.sharding import fsdp_spec, make_mesh
from train.step import (
    build_model,
    cross_entropy,
    decay_mask,
    lr_schedule,
    model_constants,
    split_model,
)


def test_schedule_warms_up_linearly_then_cosine_to_the_floor():
    c = parse_args(["--lr", "0.01", "--warmup_steps", "10", "--steps", "110",
                    "--min_lr_ratio", "0.1"], backend="cpu")
    lr = lr_schedule(c)
    k = np.arange(1, 111)  # update k uses schedule(k - 1)
    got = np.array([float(lr(i - 1)) for i in k])
    np.testing.assert_allclose(got[:10], 0.01 * k[:10] / 10, rtol=1e-6)
    np.testing.assert_allclose(got[9], 0.01, rtol=1e-6)
    np.testing.assert_allclose(got[59], 0.001 + 0.5 * 0.009 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
    np.testing.assert_allclose(got[-1], 0.001, rtol=1e-5)
    assert np.all(np.diff(got[9:]) <= 1e-9)


def test_weight_decay_only_on_matrices():
    model = build_model(parse_args(["--preset", "tiny_hybrid"], backend="cpu").model, 0)
    _, params, _ = split_model(model)
    mask = decay_mask(params)
    flat = {jax.tree_util.keystr(p): (m, x.shape) for (p, m), x in
            zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(params),
                strict=True)}
    for name, (decay, shape) in flat.items():
        if "A_log" in name or "['D']" in name or len(shape) < 2:
            assert not decay, name
        else:
            assert decay, name
    assert any(d for d, _ in flat.values()) and not all(d for d, _ in flat.values())
    # The mask plugs into optax.adamw.
    tx = optax.adamw(1e-3, weight_decay=0.1, mask=decay_mask)
    tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)


def test_weighted_cross_entropy(rng):
    logits = jnp.asarray(rng.standard_normal((2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.float32).at[0, 0].set(1.0)
    ce_sum, count, hits = cross_entropy(logits, targets, weights)
    x = np.asarray(logits, np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    assert_close(ce_sum, np.float32((ce * np.asarray(weights)).sum()), name="ce sum")
    assert float(count) == float(np.asarray(weights).sum())
    pred = np.asarray(logits).argmax(-1) == np.asarray(targets)
    assert float(hits) == float((pred * np.asarray(weights)).sum())


@pytest.mark.parametrize("shape,fsdp,expected", [
    ((256, 64), 4, ("fsdp", None)),
    ((64, 256), 4, (None, "fsdp")),
    ((64, 64), 4, ("fsdp", None)),   # ties: the first axis
    ((6, 10), 4, ()),               # nothing divides: replicated
    ((32,), 4, ("fsdp",)),
    ((), 4, ()),
    ((256, 64), 1, ()),
])
def test_fsdp_rule(shape, fsdp, expected):
    assert tuple(fsdp_spec(shape, fsdp)) == expected


def test_mesh_sizes():
    assert dict(make_mesh(8, -1, 4).shape) == {"data": 2, "fsdp": 4}
    assert dict(make_mesh(1).shape) == {"data": 1, "fsdp": 1}
    with pytest.raises(ValueError):
        make_mesh(8, 3, 4)
    with pytest.raises(ValueError):
        make_mesh(8, -1, 3)
    with pytest.raises(ValueError):
        make_mesh(len(jax.devices()) + 1)


def test_split_model_separates_parameters_from_constants():
    config = parse_args(["--preset", "tiny_hybrid"], backend="cpu").model
    model = build_model(config, 0)
    graphdef, params, constants = split_model(model)
    assert isinstance(params, nnx.State) and jax.tree.leaves(params)
    assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    # The hybrid's lightning layers hold their fixed decays outside the trained parameters, and
    # model_constants rebuilds exactly them without the model's parameters.
    const_vars = jax.tree.leaves(constants, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert const_vars and all(isinstance(v, FixedDecay) for v in const_vars)
    rebuilt = model_constants(config, 0)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(constants)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(constants), strict=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, np.asarray(b))
