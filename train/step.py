"""The functional train and eval steps: params as a pytree, `nnx.merge` inside a plain jit.

The train state is a dict pytree `{"step": int32 [], "params": nnx.State, "opt_state": optax
state, "rng": uint32 [2]}`; it is donated to the step, which returns the next one and its
metrics. Loss: next-token cross-entropy in float32, averaged over the positions whose weight is
1 (all of them for language modelling, the query positions for MQAR). A batch with
`segment_ids` holds packed documents: the model gets them and computes each document alone
(what a separator at a boundary predicts, and is predicted from: train/data.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxla.models import CausalLM, LMConfig, head_logits

# Parameters without weight decay, by name (besides every vector: norm scales, biases).
NO_DECAY_NAMES = ("A_log", "D")


def lr_schedule(config) -> optax.Schedule:
    """Learning rate of update k = count + 1 (optax passes the 0-based count): linear warm-up
    `lr * k / warmup_steps` for k <= warmup_steps, then cosine decay to `lr * min_lr_ratio` at
    k = steps."""
    lr, warmup, steps = config.lr, config.warmup_steps, config.steps
    end = lr * config.min_lr_ratio

    def schedule(count):
        k = jnp.asarray(count, jnp.float32) + 1.0
        warm = lr * k / max(warmup, 1)
        progress = jnp.clip((k - warmup) / max(steps - warmup, 1), 0.0, 1.0)
        cosine = end + 0.5 * (lr - end) * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(k <= warmup, warm, cosine)

    return schedule


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def decay_mask(params):
    """True for the arrays that get weight decay: matrices (>= 2-D) other than NO_DECAY_NAMES."""
    def decide(path, x):
        names = _path_names(path)
        return x.ndim >= 2 and not any(n in NO_DECAY_NAMES for n in names)

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """AdamW (decay on matrices only) on the warm-up + cosine schedule, after clipping."""
    adamw = optax.adamw(lr_schedule(config), b1=config.beta1, b2=config.beta2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=decay_mask)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
    return adamw


def build_model(model_config: LMConfig, seed: int) -> CausalLM:
    return CausalLM(model_config, rngs=nnx.Rngs(params=seed))


def split_model(model: CausalLM):
    """`(graphdef, params, constants)`: the trained `nnx.Param`s and the rest of the model's
    state, which is fixed by the config (e.g. the lightning layers' per-head decays)."""
    return nnx.split(model, nnx.Param, ...)


def run_on_host(fn):
    """`jax.jit(fn)()` compiled and run on the host CPU, whatever the default backend.

    For random initialisation: XLA's GPU compile of a whole model's init is pathologically slow
    (over 8 minutes for gla_340m's 24 layers on an H100, where its 2-layer version takes
    seconds); the CPU compiles it in seconds, and threefry gives the same bits on either backend.
    The explicit CPU output sharding, not `jax.default_device`, is what keeps it off the GPU; call
    it outside `jax.set_mesh` (a context mesh would claim the computation for its devices).
    The CPU device is this process's own: in a run of several CPU processes, `jax.devices("cpu")`
    lists the other processes' devices too.
    """
    host = jax.sharding.make_single_device_sharding(jax.local_devices(backend="cpu")[0])
    return jax.jit(fn, out_shardings=host)()


def model_constants(model_config: LMConfig, seed: int) -> nnx.State:
    """The model's non-parameter state as host (numpy) arrays, built without materialising the
    parameters (their initialisation is dead code in this jit, so XLA drops it). Numpy leaves
    become constants of the train step on any mesh."""
    constants = run_on_host(lambda: split_model(build_model(model_config, seed))[2])
    return jax.tree.map(np.asarray, constants)


def init_state(model_config: LMConfig, tx: optax.GradientTransformation, seed: int) -> dict:
    """The initial train state (call under `jax.jit` with out_shardings to create it sharded)."""
    _, params, _ = split_model(build_model(model_config, seed))
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params), "rng": jax.random.key_data(jax.random.key(seed))}


def token_cross_entropy(logits: jax.Array, targets: jax.Array):
    """Per position `(CE, hit)` in float32: `[..., vocab]` logits, `[...]` integer targets."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return ce, (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)


def weighted_sums(ce: jax.Array, hits: jax.Array, weights: jax.Array):
    """`(sum of weighted CE, sum of weights, sum of weighted hits)`."""
    return jnp.sum(ce * weights), jnp.sum(weights), jnp.sum(hits * weights)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array):
    """`(sum of weighted CE, sum of weights, sum of weighted hits)` over `[B, T]` positions."""
    return weighted_sums(*token_cross_entropy(logits, targets), weights)


def chunked_head_cross_entropy(x: jax.Array, head: jax.Array, targets: jax.Array,
                               weights: jax.Array, chunk: int):
    """`cross_entropy(head_logits(x, head), targets, weights)` without the `[B, T, vocab]`
    logits: a `lax.scan` over chunks of `chunk` positions per row, so at most `[B, chunk, vocab]`
    float32 logits are live. x: `[B, T, D]` final hidden states; head `[D, vocab]`; targets,
    weights `[B, T]`. T is padded to a multiple of `chunk` (at most T) with weight-0 positions.
    The batch axis stays leading (data-parallel sharding is kept).

    Differentiated, each chunk's logits are formed once (a custom VJP): the forward pass also
    takes the gradient of the weighted CE sum with respect to them, `(softmax - onehot) *
    weight`, casts it to x's dtype (bf16 matmuls in a bf16 model, as FLA's fused linear
    cross-entropy does; autodiff of the full logits multiplies the float32 cotangent) and folds
    it into the gradients of x and of the head (accumulated in float32); the backward pass only
    scales those by the incoming cotangents. Three head-sized matmuls per chunk, as for the full
    logits, and no recomputation."""
    B, T, D = x.shape
    chunk = min(chunk, T)
    pad = -T % chunk
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    n = (T + pad) // chunk
    # [n, B, chunk, ...]: the scan walks the chunks.
    xs = x.reshape(B, n, chunk, D).swapaxes(0, 1)
    targets = targets.reshape(B, n, chunk).swapaxes(0, 1)
    weights = weights.reshape(B, n, chunk).swapaxes(0, 1)
    return _fused_head_cross_entropy(xs, head, targets, weights, x.dtype, head.dtype,
                                     weights.dtype)


def _add_sums(sums, chunk_sums):
    return tuple(a + b for a, b in zip(sums, chunk_sums, strict=True))


def _zero_sums(weights):
    """Zeros of the sums' dtype (that of `weighted_sums` on float32 CE and these weights)."""
    return tuple(jnp.zeros((), jnp.promote_types(jnp.float32, weights.dtype)) for _ in range(3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused_head_cross_entropy(xs, head, targets, weights, x_dtype, head_dtype, weights_dtype):
    """`chunked_head_cross_entropy` on `[n, B, c, ...]` chunks (the undifferentiated pass)."""
    def body(sums, inputs):
        xc, tc, wc = inputs
        return _add_sums(sums, cross_entropy(head_logits(xc, head), tc, wc)), None

    sums, _ = jax.lax.scan(body, _zero_sums(weights), (xs, targets, weights))
    return sums


def _fused_fwd(xs, head, targets, weights, x_dtype, head_dtype, weights_dtype):
    acc = jnp.promote_types(xs.dtype, jnp.float32)
    compute_head = head.astype(xs.dtype)

    def body(carry, inputs):
        sums, dhead = carry
        xc, tc, wc = inputs
        logits = head_logits(xc, head)
        ce, hits = token_cross_entropy(logits, tc)
        # d(sum of w * ce) / d logits, then through the head's matmul to x and to the head.
        probs = jax.nn.softmax(logits, axis=-1)
        onehot = jax.nn.one_hot(tc, logits.shape[-1], dtype=logits.dtype)
        dlogits = ((probs - onehot) * wc[..., None].astype(logits.dtype)).astype(xs.dtype)
        # float32 until the backward scales it: one rounding to x's dtype, not two.
        dx = jnp.dot(dlogits, compute_head.T, preferred_element_type=acc)
        dhead = dhead + jnp.einsum("bcd,bcv->dv", xc, dlogits, preferred_element_type=acc)
        return (_add_sums(sums, weighted_sums(ce, hits, wc)), dhead), (dx, ce, hits)

    init = (_zero_sums(weights), jnp.zeros(head.shape, acc))
    (sums, dhead), (dxs, ce, hits) = jax.lax.scan(body, init, (xs, targets, weights))
    return sums, (dxs, dhead, ce, hits, targets)


def _fused_bwd(x_dtype, head_dtype, weights_dtype, residuals, cotangents):
    dxs, dhead, ce, hits, targets = residuals
    g_ce, g_count, g_hits = cotangents
    # The sums are linear in the weights: d/dw is ce, 1 and hits per position.
    dweights = g_ce * ce + g_count + g_hits * hits
    return ((g_ce * dxs).astype(x_dtype), (g_ce * dhead).astype(head_dtype),
            np.zeros(targets.shape, jax.dtypes.float0), dweights.astype(weights_dtype))


_fused_head_cross_entropy.defvjp(_fused_fwd, _fused_bwd)


def loss_sums(model: CausalLM, batch: dict, loss_chunk: int = 0):
    """`(sum of weighted CE, sum of weights, sum of weighted hits)` of the model on a batch;
    `loss_chunk > 0` forms the logits that many positions per row at a time
    (`chunked_head_cross_entropy`), 0 all at once."""
    segment_ids = batch.get("segment_ids")
    if loss_chunk:
        x = model.hidden_states(batch["inputs"], segment_ids=segment_ids)
        return chunked_head_cross_entropy(x, model.head_matrix(), batch["targets"],
                                          batch["weights"], loss_chunk)
    logits = model(batch["inputs"], segment_ids=segment_ids)
    return cross_entropy(logits, batch["targets"], batch["weights"])


def make_train_step(graphdef, constants: nnx.State, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, loss_chunk: int = 0):
    """`train_step(state, batch) -> (state, metrics)`, to be jitted with the state donated;
    `loss_chunk` as in `loss_sums`."""

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params, constants)
        ce_sum, count, hits = loss_sums(model, batch, loss_chunk)
        count = jnp.maximum(count, 1.0)
        return ce_sum / count, hits / count

    def train_step(state, batch):
        step = state["step"] + 1  # the 1-based number of this update
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"],
                                                                            batch)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # One key per step for stochastic layers (none of jaxla's layers draws from it yet).
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
        new_state = {"step": step, "params": params, "opt_state": opt_state, "rng": rng}
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
                   "lr": schedule(step - 1)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef, constants: nnx.State, loss_chunk: int = 0):
    """`eval_step(params, batch) -> (sum CE, sum weights, sum hits)`, to be jitted;
    `loss_chunk` as in `loss_sums`."""

    def eval_step(params, batch):
        return loss_sums(nnx.merge(graphdef, params, constants), batch, loss_chunk)

    return eval_step

