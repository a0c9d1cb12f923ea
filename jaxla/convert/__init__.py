"""Import and export Hugging Face checkpoints: FLA's GLA, transformers' Mamba and MiniMax.

A Hugging Face folder is `config.json` + `model.safetensors` (or an index and shards), maybe
with `tokenizer.json`; local folders only, nothing is downloaded, and torch is not needed.

    imported = import_checkpoint("gla-340M")      # .model (a CausalLM), .config, .eos_token_id
    export_checkpoint(model, "out/", "gla")       # config.json + model.safetensors for FLA
    loaded = load_pretrained(path)                # a model folder, a run folder or an HF folder

`python -m jaxla.convert import SRC OUT` writes a jaxla model folder (`jaxla.models.io`);
`python -m jaxla.convert export SRC OUT [--to ARCH]` writes a Hugging Face folder.

The converted model computes what the PyTorch implementation computes on the same weights (its
logits agree in float32 to a relative error of 1e-4: tests/convert). Every tensor of the
checkpoint must be used and every parameter found, or the import names the ones that are not;
a config of another architecture is refused by its `model_type` / `architectures`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxla.convert import gla, mamba, minimax
from jaxla.convert.mapping import check_names, to_hf, to_jaxla
from jaxla.models.config import LMConfig
from jaxla.models.io import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    LoadedModel,
    flat_params,
    load_model,
    model_from_params,
    param_shapes,
    read_config_json,
)
from jaxla.models.safetensors_io import read_folder, write_file

FORMATS = {gla.MODEL_TYPE: gla, mamba.MODEL_TYPE: mamba, minimax.MODEL_TYPE: minimax}
ARCHITECTURES = {fmt.ARCHITECTURE: name for name, fmt in FORMATS.items()}


class Imported(NamedTuple):
    model: object  # CausalLM
    config: LMConfig
    eos_token_id: int | None
    tokenizer_file: Path | None
    architecture: str  # a key of FORMATS


def architecture_of(hf: dict, source: str) -> str:
    """The FORMATS key of a Hugging Face config, or a ValueError naming what it is."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type in FORMATS:
        return model_type
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise ValueError(f"{source}: model_type={model_type!r}, architectures={archs!r} is not an "
                     f"architecture jaxla imports; supported: "
                     + ", ".join(f"{k} ({f.ARCHITECTURE})" for k, f in FORMATS.items()))


def _eos(hf: dict) -> int | None:
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def import_checkpoint(path, *, implementation: str | None = None,
                      dtype: str | None = None) -> Imported:
    """The jaxla model of a Hugging Face folder (float32 parameters; `dtype`: compute dtype)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder")
    hf = read_config_json(path)
    arch = architecture_of(hf, str(path / CONFIG_FILE))
    fmt = FORMATS[arch]
    config = fmt.config_from_hf(hf)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    tensors = read_folder(path)
    entries = fmt.entries(config, hf)
    ignore = set()
    if arch == minimax.MODEL_TYPE:
        minimax.check_buffers(config, tensors, str(path))
        ignore.update(n for n in minimax.buffer_names(config) if n in tensors)
    embed_name = next(e.hf for e in entries if e.jaxla == "embed.embedding")
    if config.tie_embeddings and "lm_head.weight" in tensors:
        if not np.array_equal(np.asarray(tensors["lm_head.weight"]),
                              np.asarray(tensors[embed_name])):
            raise ValueError(f"{path}: tie_word_embeddings is true but lm_head.weight differs "
                             f"from {embed_name}")
        ignore.add("lm_head.weight")
    check_names(entries, tensors, source=str(path), ignore=ignore)
    shapes = {k: s for k, (s, _) in param_shapes(config).items()}
    params = {k: v.astype(np.float32) for k, v in to_jaxla(entries, tensors, shapes).items()}
    model = model_from_params(config, params, source=str(path), implementation=implementation)
    tokenizer = path / TOKENIZER_FILE
    return Imported(model, config, _eos(hf), tokenizer if tokenizer.is_file() else None, arch)


def infer_architecture(config: LMConfig) -> str:
    """The Hugging Face architecture a jaxla config exports to by default."""
    if config.block_style == "minimax" or config.num_experts:
        return minimax.MODEL_TYPE
    if set(config.layer_pattern) == {"mamba"}:
        return mamba.MODEL_TYPE
    if set(config.layer_pattern) == {"gla"}:
        return gla.MODEL_TYPE
    raise ValueError(f"no Hugging Face architecture holds layer_pattern={config.layer_pattern}; "
                     f"exportable: all 'gla' (FLA GLA), all 'mamba' without MLP (Mamba), "
                     f"lightning/attention with block_style='minimax' and experts (MiniMax)")


def export_checkpoint(model, out, architecture: str | None = None, *,
                      eos_token_id: int | None = None, tokenizer_file=None) -> Path:
    """Write `model` (a CausalLM) as a Hugging Face folder `out` of `architecture` (a key of
    FORMATS; default: the one its config fits). Parameters are written as float32."""
    config = model.config
    arch = infer_architecture(config) if architecture is None else architecture
    if arch not in FORMATS:
        raise ValueError(f"architecture must be one of {sorted(FORMATS)}, got {arch!r}")
    fmt = FORMATS[arch]
    hf = fmt.config_to_hf(config, eos_token_id)
    params = {k: v.astype(np.float32) for k, v in flat_params(model).items()}
    tensors = to_hf(fmt.entries(config, hf), params)
    if arch == minimax.MODEL_TYPE:
        for i, kind in enumerate(config.mixers):
            if kind == "lightning":
                for name, value in minimax.decay_buffers(config, i, hf["block_size"]).items():
                    tensors[f"model.layers.{i}.self_attn.{name}"] = value
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    write_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    if tokenizer_file is not None:
        (out / TOKENIZER_FILE).write_bytes(Path(tokenizer_file).read_bytes())
    return out


def load_pretrained(path, *, step: int | None = None, implementation: str | None = None,
                    dtype: str | None = None) -> LoadedModel:
    """A model folder, a run folder of `python -m train` or a Hugging Face folder."""
    path = Path(path)
    meta = read_config_json(path) if path.is_dir() else {}
    if not path.is_dir() or "jaxla_model" in meta or "preset" in meta:
        return load_model(path, step=step, implementation=implementation, dtype=dtype)
    imported = import_checkpoint(path, implementation=implementation, dtype=dtype)
    return LoadedModel(imported.model, eos_token_id=imported.eos_token_id,
                       tokenizer_file=imported.tokenizer_file, kind=imported.architecture,
                       path=path)


__all__ = ["ARCHITECTURES", "FORMATS", "Imported", "architecture_of", "export_checkpoint",
           "import_checkpoint", "infer_architecture", "load_pretrained"]
