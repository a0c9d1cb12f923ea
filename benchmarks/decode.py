"""Decode benchmark: tokens/s and ms per token of jaxla's generation, beside its FLOP count and
beside transformers' Mamba and FLA's GLA `generate` on the same weights.

    python -m benchmarks.decode                      # GPU: the 340M presets, about 3 minutes
    python -m benchmarks.decode --new_tokens 512,1024,2048,4096,8192 --batch 1,16
    python -m benchmarks.decode --tiny               # CPU smoke run (tiny models)

Rows (greedy, no EOS: every row generates all its tokens; random weights):

* recurrent state: GLA (gla_340m), Lightning (lightning_340m), Mamba (mamba_370m), and the
  KV cache: the Transformer (transformer_340m); mode "cached". Per model and batch one
  `generate_stream` run of the largest `--new_tokens` (compiled once by a first block, not
  timed), read at block boundaries: the time to n new tokens is the time to that boundary,
  prefill included. The caches hold prompt + largest new slots in every row (the Transformer's
  KV cache is read whole each step, so its shorter counts read a longer cache than a run of
  their own would).
* naive re-encode: the Transformer, mode "naive" (each token re-encodes the sequence so far,
  padded to a multiple of `--naive_bucket`: O(T^3) attention), up to `--naive_max` new tokens;
  a `generate` call timed after one that compiles.

For each: prompt `--prompt` (512) tokens, batch `--batch`; seconds, tokens/s (batch x new / s),
ms per token (s / new), the first (compiling) call's seconds, and `jaxla.flops.generation`'s
count of what the run computes (preallocated caches; naive: exact lengths) with the achieved
TFLOP/s. Comparison rows at `--compare_new` tokens, where importable, on the same weights
exported with `jaxla.convert` (bfloat16 on both sides on a GPU): transformers'
`MambaForCausalLM.generate` (mamba_ssm's kernels when built, else transformers' slow path) and
FLA's `GLAForCausalLM.generate`; greedy, `min_new_tokens = max_new_tokens`, timed after a
4-token warm-up. A missing package prints the reason and skips its rows. The table comes last;
`$OUT/decode_bench.json` holds the rows when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

FULL = {"GLA": "gla_340m", "Lightning": "lightning_340m", "Mamba": "mamba_370m",
        "Transformer": "transformer_340m"}
TINY = {"GLA": "tiny_gla", "Lightning": "tiny_lightning", "Mamba": "tiny_mamba",
        "Transformer": "tiny_attention"}
MODE_NAME = {"GLA": "recurrent state", "Lightning": "recurrent state",
             "Mamba": "recurrent state", "Transformer": "KV cache"}


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU smoke run)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 512; "
                   "tiny: 16)")
    p.add_argument("--new_tokens", type=_ints, default=None,
                   help="new tokens, comma separated (default 512,2048; tiny: 8,16)")
    p.add_argument("--batch", type=_ints, default=None, help="batch sizes (default 1,16; "
                   "tiny: 1,2)")
    p.add_argument("--models", default="GLA,Lightning,Mamba,Transformer",
                   help="jaxla models to time (default: all four)")
    p.add_argument("--naive_max", type=int, default=None,
                   help="naive re-encode (Transformer) only up to this many new tokens "
                        "(default 512; tiny 8)")
    p.add_argument("--naive_bucket", type=int, default=256,
                   help="naive re-encode: pad the sequence to a multiple of this (one compile "
                        "per multiple; default 256)")
    p.add_argument("--compare_new", type=int, default=None,
                   help="new tokens of the transformers / FLA rows (default: the smallest of "
                        "--new_tokens)")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the transformers Mamba / FLA GLA rows")
    return p


def _time(fn) -> tuple[float, float]:
    """(seconds of a first call, seconds of a second call)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    return first, time.perf_counter() - t0


def _row(model, mode, batch, prompt, new, seconds, flops=None, compile_s=None, note=""):
    row = {"model": model, "mode": mode, "batch": batch, "prompt": prompt, "new": new,
           "seconds": seconds, "tokens_per_s": batch * new / seconds,
           "ms_per_token": 1e3 * seconds / new, "gflop": None if flops is None else flops / 1e9,
           "tflop_per_s": None if flops is None else flops / seconds / 1e12,
           "first_call_s": compile_s, "note": note}
    print(f"  {model:<12} {mode:<16} B={batch:<3} new={new:<5} {seconds:8.3f} s "
          f"{row['tokens_per_s']:10.1f} tok/s {row['ms_per_token']:8.3f} ms/token"
          + ("" if flops is None else f"  {flops / 1e9:10.1f} GFLOP") + (f"  {note}" if note
                                                                         else ""), flush=True)
    return row


def _cached_flops(config, new, max_new, prompt, batch):
    """FLOPs of the first `new` tokens of a generation whose caches hold prompt + max_new
    slots (what the timed run computes): the prefill, then new - 1 steps."""
    from jaxla.flops import generation as G

    try:
        prefill, step = G._cached_terms(config, max_new, prompt, batch, "all", None,
                                        "preallocated")
        return G.sum_cached(lambda p: prefill, step, new, prompt).total
    except NotImplementedError:
        return None


def jaxla_rows(args, presets, on_gpu) -> tuple[list[dict], dict]:
    import math

    import jax.numpy as jnp
    from flax import nnx

    from jaxla.flops.generation import generation_flops
    from jaxla.models import CausalLM, LMConfig, generate, generate_stream

    rows, models = [], {}
    dtype = "bfloat16" if on_gpu else "float32"
    max_new = max(args.new_tokens)
    block = math.gcd(*args.new_tokens)
    for name in args.models.split(","):
        name = name.strip()
        if name not in presets:
            raise SystemExit(f"--models: unknown model {name!r}; choose from {sorted(presets)}")
        config = LMConfig.preset(presets[name], dtype=dtype)
        model = CausalLM(config, rngs=nnx.Rngs(0))
        models[name] = model
        for batch in args.batch:
            rng = np.random.default_rng(batch)
            prompt = jnp.asarray(rng.integers(0, config.vocab_size, (batch, args.prompt)),
                                 jnp.int32)
            kw = dict(temperature=0.0, block_size=block)
            # One compile serves every length: the loop's limit is a runtime value.
            t0 = time.perf_counter()
            next(iter(generate_stream(model, prompt, max_new, **kw)))
            compile_s = time.perf_counter() - t0
            done, marks, t0 = 0, {}, time.perf_counter()
            for chunk in generate_stream(model, prompt, max_new, **kw):
                done += len(chunk[0])
                if done in args.new_tokens:
                    marks[done] = time.perf_counter() - t0
            for new in args.new_tokens:
                rows.append(_row(f"jaxla {name}", MODE_NAME[name], batch, args.prompt, new,
                                 marks[new], _cached_flops(config, new, max_new, args.prompt,
                                                           batch), compile_s))
            if name != "Transformer":
                continue
            for new in (n for n in args.new_tokens if n <= args.naive_max):
                def fn(model=model, prompt=prompt, new=new):
                    jnp.asarray(generate(model, prompt, new, mode="naive", temperature=0.0,
                                         naive_bucket=args.naive_bucket)).block_until_ready()

                first, seconds = _time(fn)
                flops = generation_flops(config, new, mode="naive", prompt_len=args.prompt,
                                         batch=batch).total
                rows.append(_row(f"jaxla {name}", "naive re-encode", batch, args.prompt, new,
                                 seconds, flops, first, f"bucket {args.naive_bucket}"))
    return rows, models


def compare_rows(args, models, on_gpu) -> list[dict]:
    """transformers' Mamba and FLA's GLA on the jaxla models' weights."""
    rows = []
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        print(f"  skip transformers Mamba / FLA GLA: torch is not importable ({exc})")
        return rows
    from jaxla.convert import export_checkpoint

    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    specs = []
    if "Mamba" in models:
        specs.append(("Mamba", "mamba", "transformers", "MambaForCausalLM"))
    if "GLA" in models:
        specs.append(("GLA", "gla", "fla.models", "GLAForCausalLM"))
    for name, arch, module, cls in specs:
        try:
            mod = __import__(module, fromlist=[cls])
            model_cls = getattr(mod, cls)
        except Exception as exc:  # noqa: BLE001
            print(f"  skip {module}.{cls}: not importable ({type(exc).__name__}: {exc})")
            continue
        note = ""
        if arch == "mamba":
            try:
                import mamba_ssm  # noqa: F401

                note = "mamba_ssm kernels"
            except Exception:  # noqa: BLE001
                note = "no mamba_ssm: transformers' slow path"
        with tempfile.TemporaryDirectory() as folder:
            export_checkpoint(models[name], folder, arch, eos_token_id=0)
            ref = model_cls.from_pretrained(folder, dtype=dtype).to(device).eval()
        for batch in args.batch:
            gen = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, models[name].config.vocab_size, (batch, args.prompt),
                                   generator=gen).to(device)
            for new in [args.compare_new]:
                def fn(ref=ref, prompt=prompt, new=new):
                    with torch.no_grad():
                        ref.generate(prompt, attention_mask=torch.ones_like(prompt),
                                     max_new_tokens=new, min_new_tokens=new, do_sample=False)
                    if device == "cuda":
                        torch.cuda.synchronize()

                try:
                    t0 = time.perf_counter()
                    fn(new=4)  # warm-up: kernels, autotuning
                    first = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    fn()
                    seconds = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001
                    print(f"  {cls}.generate failed at B={batch} new={new}: "
                          f"{type(exc).__name__}: {exc}")
                    break
                rows.append(_row(f"{'transformers' if arch == 'mamba' else 'FLA'} {name}",
                                 "generate", batch, args.prompt, new, seconds, None, first,
                                 note))
        del ref
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | B | prompt | new | s | tokens/s | ms/token | GFLOP | TFLOP/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        gflop = "" if r["gflop"] is None else f"{r['gflop']:,.4g}"
        tflops = "" if r["tflop_per_s"] is None else f"{r['tflop_per_s']:.3g}"
        mode = r["mode"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(f"| {r['model']} | {mode} | {r['batch']} | {r['prompt']} | {r['new']} | "
                     f"{r['seconds']:.3f} | {r['tokens_per_s']:,.1f} | {r['ms_per_token']:.3f} "
                     f"| {gflop} | {tflops} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prompt = args.prompt or (16 if args.tiny else 512)
    args.new_tokens = args.new_tokens or ([8, 16] if args.tiny else [512, 2048])
    args.batch = args.batch or ([1, 2] if args.tiny else [1, 16])
    args.naive_max = args.naive_max or (8 if args.tiny else 512)
    args.compare_new = args.compare_new or min(args.new_tokens)
    if args.tiny:
        args.naive_bucket = min(args.naive_bucket, 8)
    if args.prompt < 1:
        parser.error(f"--prompt must be >= 1, got {args.prompt}")
    import jax

    on_gpu = jax.default_backend() == "gpu"
    print(f"decode benchmark on {jax.devices()[0].device_kind} ({jax.default_backend()}): "
          f"prompt {args.prompt}, new {args.new_tokens}, batch {args.batch}", flush=True)
    rows, models = jaxla_rows(args, TINY if args.tiny else FULL, on_gpu)
    if args.compare:
        rows += compare_rows(args, models, on_gpu)
    print()
    print(table(rows))
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "decode_bench.json"), "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
