"""Models on disk: jaxla model folders and the run folders of `python -m train`.

A **model folder** holds `config.json` and `model.safetensors`:

* `config.json`: `{"jaxla_model": {LMConfig fields}, "eos_token_id": int | null}`, plus
  `tokenizer.json` beside it when the model has a tokenizer (none: byte-level, vocab 256).
* `model.safetensors`: every `nnx.Param` of the `CausalLM`, named by its dotted path
  (`blocks.0.mixer.q_proj.kernel`, `embed.embedding`, ...), in the parameter dtype. State that
  the config fixes (the lightning layers' decays) is not stored.

A **run folder** (written by `python -m train`) holds `config.json` with the training config
(its `"model"` entry is the LMConfig) and Orbax checkpoints `checkpoints/<step>/state`, a flat
dict whose parameter entries are named `params.<dotted path>`; `load_model` reads the newest
step's parameters (and `tokenizer.json` if the run has one).

`load_model(path)` takes either kind of folder; `jaxla.convert.load_pretrained` also takes the
Hugging Face folders of the architectures it imports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxla.models.config import LMConfig
from jaxla.models.lm import CausalLM
from jaxla.models.safetensors_io import read_file, write_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flat_params(model: CausalLM) -> dict[str, np.ndarray]:
    """`{dotted path: numpy array}` of the model's `nnx.Param`s."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    out = {}
    for path, leaf in leaves:
        name = ".".join(_key_name(k) for k in path if _key_name(k) != "value")
        out[name] = np.asarray(leaf)
    return out


def param_shapes(config: LMConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{dotted path: (shape, dtype)}` of the parameters a `CausalLM(config)` has."""
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]
    return {".".join(_key_name(k) for k in path if _key_name(k) != "value"):
            (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in leaves}


def check_param_names(config: LMConfig, names, *, source: str) -> None:
    """One ValueError naming the missing and the unexpected parameters, if any."""
    want = set(param_shapes(config))
    got = set(names)
    missing, extra = sorted(want - got), sorted(got - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s): {', '.join(extra[:8])}"
                         + (" ..." if len(extra) > 8 else ""))
        raise ValueError(f"{source}: {'; '.join(parts)}")


def model_from_params(config: LMConfig, params: dict[str, np.ndarray], *,
                      source: str = "parameters", implementation: str | None = None) -> CausalLM:
    """A `CausalLM(config)` holding `params` (`{dotted path: array}`, every parameter exactly
    once, each of the shape the config implies; cast to the config's parameter dtype)."""
    check_param_names(config, params, source=source)
    shapes = param_shapes(config)
    for name, (shape, _) in shapes.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(params[name].shape)}, "
                             f"the config needs {shape}")
    model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0),
                                            implementation=implementation))
    graphdef, abstract_params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    values = []
    for path, leaf in leaves:
        name = ".".join(_key_name(k) for k in path if _key_name(k) != "value")
        values.append(jnp.asarray(params[name], dtype=leaf.dtype))
    params_state = jax.tree_util.tree_unflatten(treedef, values)
    # The non-parameter state (fixed decays) comes from a real construction of the config.
    constants = nnx.split(CausalLM(config, rngs=nnx.Rngs(0), implementation=implementation),
                          nnx.Param, ...)[2]
    del rest
    return nnx.merge(graphdef, params_state, constants)


def config_to_dict(config: LMConfig) -> dict:
    import dataclasses

    out = dataclasses.asdict(config)
    for name, value in out.items():
        if isinstance(value, tuple):
            out[name] = list(value)
    return out


def save_model(model: CausalLM, path, *, eos_token_id: int | None = None,
               tokenizer_file=None) -> Path:
    """Write `model` as a model folder at `path` (created); returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"jaxla_model": config_to_dict(model.config), "eos_token_id": eos_token_id}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_file(flat_params(model), path / WEIGHTS_FILE)
    if tokenizer_file is not None:
        src = Path(tokenizer_file)
        if src.resolve() != (path / TOKENIZER_FILE).resolve():
            (path / TOKENIZER_FILE).write_bytes(src.read_bytes())
    return path


class LoadedModel:
    """A model read from disk: `model`, `config`, `eos_token_id`, `tokenizer_file` (or None),
    `kind` ("model", "run" or the imported architecture) and `path`."""

    def __init__(self, model, *, eos_token_id, tokenizer_file, kind, path):
        self.model = model
        self.config = model.config
        self.eos_token_id = eos_token_id
        self.tokenizer_file = tokenizer_file
        self.kind = kind
        self.path = path


def read_config_json(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no {CONFIG_FILE}: not a model, run or "
                                f"checkpoint folder")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(file)!r} is not valid JSON: {exc}") from None


def _tokenizer_beside(path: Path, meta: dict) -> Path | None:
    if (path / TOKENIZER_FILE).is_file():
        return path / TOKENIZER_FILE
    named = meta.get("tokenizer")
    if named:
        named = Path(named)
        if named.is_file():
            return named
    return None


def latest_run_step(run_dir: Path) -> int | None:
    ckpt = run_dir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()] \
        if ckpt.is_dir() else []
    return max(steps) if steps else None


def read_run_params(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    """The parameters saved at `step` of a run folder, `{dotted path: array}` on the host."""
    import orbax.checkpoint as ocp

    item = (run_dir / "checkpoints" / str(step) / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    absl = logging.getLogger("absl")  # Orbax warns that train's items carry no metadata file
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        tree = checkpointer.metadata(item)
        tree = getattr(tree, "item_metadata", tree)
        tree = dict(getattr(tree, "tree", tree))
        names = [n for n in tree if n.startswith("params.")]
        cpu = jax.sharding.make_single_device_sharding(jax.devices("cpu")[0])
        target = {n: jax.ShapeDtypeStruct(tuple(tree[n].shape), tree[n].dtype, sharding=cpu)
                  for n in names}
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    finally:
        absl.setLevel(level)
    return {n[len("params."):]: np.asarray(v) for n, v in restored.items()}


def load_model(path, *, step: int | None = None, implementation: str | None = None,
               dtype: str | None = None) -> LoadedModel:
    """The model in a model folder or a run folder (its newest checkpoint, or `step`).
    `dtype` overrides the compute dtype."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder")
    meta = read_config_json(path)
    if "jaxla_model" in meta:
        config = LMConfig(**meta["jaxla_model"])
        if dtype is not None:
            config = config.replace(dtype=dtype)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{str(path)!r} has no {WEIGHTS_FILE}")
        model = model_from_params(config, read_file(weights), source=str(weights),
                                  implementation=implementation)
        return LoadedModel(model, eos_token_id=meta.get("eos_token_id"),
                           tokenizer_file=_tokenizer_beside(path, meta), kind="model", path=path)
    if "model" in meta and isinstance(meta["model"], dict) and "preset" in meta:
        config = LMConfig(**meta["model"])
        if dtype is not None:
            config = config.replace(dtype=dtype)
        step = latest_run_step(path) if step is None else step
        if step is None:
            raise FileNotFoundError(f"run folder {str(path)!r} has no checkpoint yet")
        params = read_run_params(path, step)
        model = model_from_params(config, params, source=f"{path}/checkpoints/{step}",
                                  implementation=implementation)
        tokenizer = _tokenizer_beside(path, meta)
        eos = meta.get("eos_token_id")
        return LoadedModel(model, eos_token_id=eos, tokenizer_file=tokenizer, kind="run",
                           path=path)
    kind = meta.get("model_type") or meta.get("architectures")
    raise ValueError(f"{str(path / CONFIG_FILE)!r} describes neither a jaxla model folder nor a "
                     f"run folder (model_type/architectures: {kind!r}); Hugging Face folders "
                     f"load through jaxla.convert.load_pretrained")
