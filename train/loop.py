"""The training program: set up the run, compile the step ahead of time, loop, evaluate, save.

`main(argv)` is `python -m train`; `train(config)` runs a resolved `TrainConfig` and returns a
result dict (per-step losses, evaluations, summary) for tests and scripts.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import metrics as M
from train.checkpoint import Checkpointer
from train.config import TrainConfig, parse_args
from train.data import Prefetcher, make_dataset
from train.sharding import batch_sharding, make_mesh, state_shardings
from train.step import (
    build_model,
    init_state,
    lr_schedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
    model_constants,
    run_on_host,
    split_model,
)

RUN_FILES = ("config.json", "metrics.jsonl", "curves.png", "summary.json")


class TrainingDiverged(RuntimeError):
    """A step produced a NaN/Inf loss or gradient norm; nothing after the last good checkpoint
    was saved."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_good: int | None):
        self.step, self.loss, self.grad_norm, self.last_good = step, loss, grad_norm, last_good
        where = (f"the last good checkpoint is step {last_good}" if last_good is not None
                 else "no checkpoint was written")
        super().__init__(f"step {step}: loss {loss}, gradient norm {grad_norm}: training "
                         f"diverged and stopped before saving this state; {where}")


def _mib(n) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _memory_line(compiled) -> str:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    if m is None:
        return "memory analysis unavailable"
    alias = getattr(m, "alias_size_in_bytes", 0)
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - alias
    return (f"arguments {_mib(m.argument_size_in_bytes)}, outputs {_mib(m.output_size_in_bytes)} "
            f"({_mib(alias)} aliased to donated arguments), temporaries "
            f"{_mib(m.temp_size_in_bytes)}, code {_mib(m.generated_code_size_in_bytes)}; "
            f"peak estimate {_mib(total)} per device")


def _flops_per_token(model_config, seq_len: int) -> tuple[float, str]:
    from jaxla.flops import six_n, training_flops_per_token

    try:
        return float(training_flops_per_token(model_config, seq_len)), "jaxla.flops"
    except Exception:  # noqa: BLE001 - a config the formulas do not cover
        return float(six_n(model_config)), "6N"


def _prepare_run_dir(config: TrainConfig) -> Path:
    run_dir = config.run_path
    if config.overwrite and run_dir.exists():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _copy_to_out(run_dir: Path, name: str):
    """Copy the small run files to $OUT/<name>/ when OUT is set (device runs)."""
    out = os.environ.get("OUT")
    if not out:
        return
    dest = Path(out) / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in RUN_FILES:
        if (run_dir / fname).exists():
            shutil.copy2(run_dir / fname, dest / fname)


def train(config: TrainConfig, *, echo=print) -> dict:
    """Run training as `config` says; see the module docstring of `train` for the files."""
    t_start = time.perf_counter()
    run_dir = _prepare_run_dir(config)
    ckpt = Checkpointer(run_dir, keep=config.keep) if config.checkpoint or config.resume else None
    latest = ckpt.latest_step() if ckpt is not None else None
    if latest is not None and not config.resume:
        raise SystemExit(f"{run_dir} has checkpoints up to step {latest}: pass --resume to "
                         f"continue it, --overwrite to start afresh, or another --name")
    if config.resume and latest is None:
        echo(f"--resume: no checkpoint in {run_dir}, starting from step 0")

    mcfg = config.model
    mesh = make_mesh(config.num_devices, config.mesh_data, config.mesh_fsdp)
    n_dev = mesh.size
    if config.batch_size % n_dev:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the {n_dev} "
                         f"devices of the mesh (data x fsdp)")
    backend = jax.default_backend()
    kind = M.device_kind()
    echo(f"jaxla train: {run_dir}")
    echo(f"  jax {jax.__version__}, {backend}, {n_dev} x {kind}, mesh data={mesh.shape['data']} "
         f"x fsdp={mesh.shape['fsdp']}")

    t0 = time.perf_counter()
    dataset = make_dataset(config)
    info = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                     for k, v in dataset.info.items())
    echo(f"  data: {config.data} ({info}) in {time.perf_counter() - t0:.1f} s")
    if dataset.entropy is not None:
        echo(f"  unigram entropy of the training tokens: {dataset.entropy:.4f} nats "
             f"({dataset.entropy / math.log(2):.3f} bits) per token")

    tx = make_optimizer(config)
    schedule = lr_schedule(config)
    abstract_model = nnx.eval_shape(lambda: build_model(mcfg, config.seed))
    graphdef, _, _ = split_model(abstract_model)
    constants = model_constants(mcfg, config.seed)
    n_params = abstract_model.num_params()
    flops_per_token, flops_source = _flops_per_token(mcfg, config.seq_len)
    from jaxla.flops import peak_flops

    peak = peak_flops(kind, mcfg.dtype)
    echo(f"  model: preset {config.preset}, {mcfg.num_layers} x {','.join(mcfg.layer_pattern)}, "
         f"hidden {mcfg.hidden_size}, vocab {mcfg.vocab_size}, {n_params / 1e6:.2f}M params, "
         f"compute {mcfg.dtype}, params {mcfg.param_dtype}, implementation "
         f"{mcfg.implementation or 'default'}")
    echo(f"  batch {config.batch_size} x {config.seq_len} = {config.tokens_per_step:,} tokens/step,"
         f" {config.steps} steps; AdamW lr {config.lr:g} (warm-up {config.warmup_steps}, cosine "
         f"to {config.lr * config.min_lr_ratio:g}), wd {config.weight_decay:g}, clip "
         f"{config.clip_norm:g}")
    echo(f"  {flops_per_token / 1e6:,.2f} MFLOP per trained token ({flops_source}); peak "
         f"{'n/a (MFU n/a on ' + kind + ')' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}")

    init_fn = functools.partial(init_state, mcfg, tx, config.seed)
    abstract_state = jax.eval_shape(init_fn)
    state_sh = state_shardings(mesh, abstract_state)
    batch_sh = batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    start = 0
    if config.resume and latest is not None:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, state_sh)
        with jax.set_mesh(mesh):
            state, meta = ckpt.restore(latest, target)
        saved_model = meta.get("config", {}).get("model")
        if saved_model is not None and saved_model != config.to_dict()["model"]:
            raise SystemExit("the checkpoint's model config differs from this one; resume "
                             "with the saved config.json (drop the model overrides)")
        start = int(meta["step"])
        echo(f"  resumed from {ckpt.directory / str(latest)} at step {start}")
    else:
        t0 = time.perf_counter()
        state = jax.device_put(run_on_host(init_fn), state_sh)
        echo(f"  initialised the model and optimizer state in {time.perf_counter() - t0:.1f} s")
    (run_dir / "config.json").write_text(config.to_json() + "\n")
    log = M.JsonlLog(run_dir / "metrics.jsonl")
    log.truncate_after(start)

    # Compile ahead of time.
    B, T = config.batch_size, config.seq_len
    # The dataset's batch layout: inputs, targets, weights (and segment_ids for packed rows).
    batch_abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
                      for k, v in dataset.val_batches[0].items()}
    step_fn = jax.jit(make_train_step(graphdef, constants, tx, schedule, config.nan_at_step),
                      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                      donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(graphdef, constants),
                      in_shardings=(state_sh["params"], batch_sh), out_shardings=replicated)
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch_abstract).compile()
        compile_s = time.perf_counter() - t0
        echo(f"  compiled the train step in {compile_s:.1f} s: {_memory_line(compiled)}")
        t0 = time.perf_counter()
        compiled_eval = eval_fn.lower(state["params"], batch_abstract).compile()
        echo(f"  compiled the eval step in {time.perf_counter() - t0:.1f} s")
        val_batches = [jax.device_put(b, batch_sh) for b in dataset.val_batches]

    last = config.steps if config.stop_after is None else min(config.steps, config.stop_after)
    thr = M.Throughput(config.tokens_per_step, flops_per_token, peak, n_dev, config.timing_warmup)
    progress = M.Progress(config.progress, config.steps, start)
    losses: dict[int, float] = {}
    evals: list[dict] = []
    window: list[float] = []
    saved: list[int] = []
    last_good = latest if config.resume else None
    pending = None
    t_loop = time.perf_counter()

    def evaluate(step: int, params) -> dict:
        sums = np.zeros(3)
        for b in val_batches:
            sums += np.asarray(jax.device_get(compiled_eval(params, b)), np.float64)
        record = {"event": "eval", "step": step, "val_loss": float(sums[0] / max(sums[1], 1.0))}
        if dataset.has_accuracy:
            record["val_accuracy"] = float(sums[2] / max(sums[1], 1.0))
        return record

    def finish_step(step: int, metrics):
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        thr.step_done(step, start + 1)
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            log.write({"event": "diverged", "step": step, "loss": m["loss"],
                       "grad_norm": m["grad_norm"]})
            raise TrainingDiverged(step, m["loss"], m["grad_norm"], last_good)
        losses[step] = m["loss"]
        window.append(m["loss"])
        is_log = step % config.log_every == 0 or step == last
        rates = thr.rates(config.log_every)
        postfix = {"loss": f"{m['loss']:.4f}", "tok/s": M.fmt(rates["tokens_per_s"], ",.0f")}
        if peak is not None:
            postfix["MFU"] = "n/a" if rates["mfu"] is None else f"{100 * rates['mfu']:.1f}%"
        else:
            postfix["TFLOP/s"] = M.fmt(rates["tflops_per_device"], ".3g")
        if dataset.has_accuracy:
            postfix["acc"] = f"{m['accuracy']:.3f}"
        progress.update(step, postfix, line=is_log)
        if is_log:
            record = {"event": "train", "step": step, "loss": m["loss"],
                      "loss_avg": float(np.mean(window)), "grad_norm": m["grad_norm"],
                      "lr": m["lr"], **{k: v for k, v in rates.items() if k != "timed_steps"},
                      "elapsed_s": time.perf_counter() - t_loop}
            if dataset.has_accuracy:
                record["accuracy"] = m["accuracy"]
            log.write(record)
            window.clear()

    prefetch = Prefetcher(dataset, start + 1, last, lambda b: jax.device_put(b, batch_sh))
    thr.pause()
    try:
        with jax.set_mesh(mesh):
            for step in range(start + 1, last + 1):
                got, batch = next(prefetch)
                assert got == step, (got, step)
                state, metrics = compiled(state, batch)
                if pending is not None:
                    finish_step(*pending)
                pending = (step, metrics)
                do_eval = step % config.eval_every == 0 or step == config.steps
                do_save = ckpt is not None and config.checkpoint and (
                    step == config.steps or (config.save_every and step % config.save_every == 0))
                if do_eval or do_save or step == last:
                    finish_step(*pending)  # checks the loss before anything is saved
                    pending = None
                    if do_eval:
                        record = evaluate(step, state["params"])
                        evals.append(record)
                        log.write(record)
                        acc = record.get("val_accuracy")
                        progress.write(f"step {step}: val loss {record['val_loss']:.4f}"
                                       + (f", val accuracy {acc:.3f}" if acc is not None else ""))
                    if do_save:
                        meta = {"step": step, "data": {"kind": config.data, "seed": config.seed,
                                                       "next_step": step + 1},
                                "config": config.to_dict()}
                        path = ckpt.save(step, state, meta)
                        saved.append(step)
                        last_good = step
                        progress.write(f"step {step}: saved {path}")
                    thr.pause()
    except TrainingDiverged as exc:
        progress.close()
        echo(f"ERROR: {exc}")
        _finish_files(config, run_dir, log, dataset)
        raise
    finally:
        prefetch.close()
        progress.close()
        if ckpt is not None:
            ckpt.close()
    loop_s = time.perf_counter() - t_loop

    rates = thr.rates()
    peak_mem = M.peak_memory_bytes()
    final_eval = evals[-1] if evals else None
    summary = {
        "run_dir": str(run_dir), "preset": config.preset, "data": config.data,
        "device": kind, "num_devices": n_dev, "batch_size": B, "seq_len": T,
        "steps_run": len(losses), "last_step": last, "params": n_params,
        "flops_per_token": flops_per_token, "flops_source": flops_source,
        "six_n_flops_per_token": 6 * n_params, **rates,
        "mfu_6n": (None if rates["tokens_per_s"] is None or peak is None
                   else 6 * n_params * rates["tokens_per_s"] / (n_dev * peak)),
        "peak_memory_bytes": peak_mem, "compile_s": compile_s, "train_loop_s": loop_s,
        "total_s": time.perf_counter() - t_start,
        "final_loss": losses[max(losses)] if losses else None,
        "final_val_loss": None if final_eval is None else final_eval["val_loss"],
        "final_val_accuracy": None if final_eval is None else final_eval.get("val_accuracy"),
        "unigram_entropy": dataset.entropy, "checkpoints": saved,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _finish_files(config, run_dir, log, dataset)
    mem = "n/a" if peak_mem is None else f"{peak_mem / M.GiB:.2f} GiB"
    val = "" if final_eval is None else f", val loss {final_eval['val_loss']:.4f}"
    if final_eval is not None and "val_accuracy" in final_eval:
        val += f", val accuracy {final_eval['val_accuracy']:.3f}"
    if dataset.entropy is not None and final_eval is not None:
        val += f" (unigram entropy {dataset.entropy:.4f})"
    echo(f"trained steps {start + 1}-{last} in {loop_s:.1f} s (compile {compile_s:.1f} s, "
         f"total {summary['total_s']:.1f} s){val}")
    echo(f"summary: {config.preset} B={B} T={T} on {n_dev} x {kind}: {M.fmt_rate(rates)} "
         f"(after {config.timing_warmup} warm-up steps, {rates['timed_steps']} timed), peak "
         f"memory {mem}, final loss {M.fmt(summary['final_loss'], '.4f')}")
    return {"losses": losses, "evals": evals, "summary": summary, "run_dir": run_dir,
            "state": state}


def _finish_files(config: TrainConfig, run_dir: Path, log: M.JsonlLog, dataset):
    if config.plot:
        path = M.plot_curves(log.read(), run_dir / "curves.png", entropy=dataset.entropy,
                             title=f"{config.run_name}: {config.preset} on {config.data}")
        if path is None:
            (run_dir / "curves.png").unlink(missing_ok=True)
    _copy_to_out(run_dir, config.run_name)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        train(config)
    except TrainingDiverged:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
