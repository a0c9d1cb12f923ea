"""The training program: set up the run, compile the step ahead of time, loop, evaluate, save.

`main(argv)` is `python -m train`; `train(config)` runs a resolved `TrainConfig` and returns a
result dict (per-step losses, evaluations, summary) for tests and scripts. It reads top-down in
three pieces:

* `set_up`: check the run folder, build the mesh and the data, restore the newest intact
  checkpoint (or initialise), compile the train and eval steps: a `Run`.
* `run_steps`: the step loop. Each step's metrics are fetched one step late (`OneStepBehind`),
  so the device always has the next step queued; before a step is evaluated or saved its metrics
  are fetched and the divergence guard (`train.guard`) has passed it.
* `summarize`: summary.json, the plot and the closing lines.

Bad options, data or run folders raise `ConfigError`, `DataError` or `CheckpointError` (one
line each; `main` exits with status 2); a diverged run raises `TrainingDiverged` (status 1).

Several processes (`--distributed`, `train.distributed`): every process runs all of this on its
own rows of each batch; only process 0 prints and writes the run files.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import metrics as M
from .checkpoint import Checkpointer, CheckpointError
from .config import (
    PROG,
    ConfigError,
    TrainConfig,
    check_run_dir_exists,
    model_differences,
    parse_args,
    parse_launch_args,
)
from .data import DataError, Dataset, Prefetcher, make_dataset
from .distributed import LaunchError, initialize, is_main_process, sync
from .guard import DivergenceGuard, TrainingDiverged
from .sharding import (
    batch_sharding,
    make_mesh,
    process_rows,
    put_from_host,
    put_rows,
    state_shardings,
)
from .step import (
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

# `on_step(step, metrics) -> metrics`: called with each step's (not yet fetched) metrics right
# after the step is queued. Tests inject faults with it (a NaN or a spike in the loss, a kill).
StepHook = Callable[[int, dict], dict]


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


def _quiet(*args, **kwargs):
    """The `echo` of the processes other than process 0."""


def _copy_to_out(run_dir: Path, name: str):
    """Copy the small run files (RUN_FILES) to $OUT/<name>/ when the environment variable OUT is
    set: on the GPU machines $OUT is the one folder that comes back from a run (README,
    "Training"; `--help`)."""
    out = os.environ.get("OUT")
    if not out:
        return
    dest = Path(out) / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in RUN_FILES:
        if (run_dir / fname).exists():
            shutil.copy2(run_dir / fname, dest / fname)


def train(config: TrainConfig, *, echo=print, on_step: StepHook | None = None) -> dict:
    """Run training as `config` says; see the module docstring for the pieces and the errors."""
    if not is_main_process():
        echo = _quiet
    run = set_up(config, echo)
    try:
        steps = run_steps(run, on_step)
    except TrainingDiverged:
        _finish_files(run, echo)
        raise
    finally:
        if run.ckpt is not None:
            run.ckpt.close()
    return summarize(run, steps, echo)


# --------------------------------------------------------------------------------------------
# Set-up.


@dataclasses.dataclass
class Run:
    """A run, set up and compiled: what the step loop and the summary need."""

    config: TrainConfig
    run_dir: Path
    main: bool  # process 0: it prints and writes the run files
    mesh: jax.sharding.Mesh
    dataset: Dataset
    rows: np.ndarray  # the batch rows this process loads (all of them in a run of one process)
    ckpt: Checkpointer | None
    log: M.JsonlLog
    state: dict  # the train state after step `start` (donated to the first step)
    start: int  # the last step already done: 0, or the restored checkpoint's step
    train_step: Callable  # compiled: (state, batch) -> (state, metrics)
    eval_step: Callable  # compiled: (params, batch) -> (sum CE, sum weights, sum hits)
    val_batches: list
    batch_sharding: NamedSharding
    throughput: M.Throughput
    peak: float | None  # the device's peak FLOP/s (None: unknown, no MFU)
    n_params: int
    flops_per_token: float
    flops_source: str
    compile_s: float
    t_start: float


def set_up(config: TrainConfig, echo=print) -> Run:
    """Check the run folder, build mesh and data, restore or initialise the state, compile."""
    t_start = time.perf_counter()
    run_dir = config.run_path
    main = is_main_process()
    _check_run_dir(config)
    sync("run folder checked")  # before process 0 changes it
    mesh = _make_mesh(config)
    kind = M.device_kind()
    processes = jax.process_count()
    echo(f"jaxla train: {run_dir}")
    echo(f"  jax {jax.__version__}, {jax.default_backend()}, {mesh.size} x {kind}"
         f"{f' in {processes} processes' if processes > 1 else ''}, mesh "
         f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}")
    batch_sh = batch_sharding(mesh)
    rows = process_rows(batch_sh, config.batch_size)
    dataset = _make_dataset(config, rows, echo)

    mcfg = config.model
    tx = make_optimizer(config)
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

    _prepare_run_dir(config, main)
    ckpt = Checkpointer(run_dir, keep=config.keep) if config.checkpoint or config.resume else None
    init_fn = functools.partial(init_state, mcfg, tx, config.seed)
    state_sh = state_shardings(mesh, jax.eval_shape(init_fn))
    try:
        state, start = _restore_or_init(config, ckpt, mesh, init_fn, state_sh, echo)
    except BaseException:
        if ckpt is not None:
            ckpt.close()
        raise
    if main:
        (run_dir / "config.json").write_text(config.to_json() + "\n")
        if config.tokenizer and Path(config.tokenizer).resolve() != (run_dir / "tokenizer.json"
                                                                     ).resolve():
            shutil.copyfile(config.tokenizer, run_dir / "tokenizer.json")  # for jaxla.generate
    log = M.JsonlLog(run_dir / "metrics.jsonl", writer=main)
    log.truncate_after(start)

    train_step, eval_step, compile_s = _compile(config, mesh, state, state_sh, batch_sh,
                                                dataset.val_batches[0], graphdef, constants,
                                                tx, echo)
    sync("compiled")  # the first steps' collectives wait for no slower compile
    with jax.set_mesh(mesh):
        val_batches = [put_rows(b, rows, batch_sh, config.batch_size)
                       for b in dataset.val_batches]
    throughput = M.Throughput(config.tokens_per_step, flops_per_token, peak, mesh.size,
                              config.timing_warmup)
    return Run(config=config, run_dir=run_dir, main=main, mesh=mesh, dataset=dataset,
               rows=rows, ckpt=ckpt, log=log,
               state=state, start=start, train_step=train_step, eval_step=eval_step,
               val_batches=val_batches, batch_sharding=batch_sh, throughput=throughput,
               peak=peak, n_params=n_params, flops_per_token=flops_per_token,
               flops_source=flops_source, compile_s=compile_s, t_start=t_start)


def _check_run_dir(config: TrainConfig):
    """A resumed run's folder must exist; a new run must not silently continue or overwrite
    an existing run's checkpoints."""
    run_dir = config.run_path
    if config.resume:
        check_run_dir_exists(run_dir)
    if config.resume or config.overwrite or not (run_dir / "checkpoints").is_dir():
        return
    ckpt = Checkpointer(run_dir)
    steps = ckpt.all_steps()
    ckpt.close()
    if steps:
        raise ConfigError(f"--resume: {run_dir} has checkpoints up to step {steps[-1]}; pass "
                          f"--resume to continue it, --overwrite to start afresh, or another "
                          f"--name or --run_dir")


def _prepare_run_dir(config: TrainConfig, main: bool):
    """`--overwrite`: process 0 empties the run folder while the others wait."""
    run_dir = config.run_path
    if main and config.overwrite and run_dir.exists():
        for name in ("checkpoints", "damaged_checkpoints"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    sync("run folder prepared")
    run_dir.mkdir(parents=True, exist_ok=True)


def _make_mesh(config: TrainConfig) -> jax.sharding.Mesh:
    try:
        mesh = make_mesh(config.num_devices, config.mesh_data, config.mesh_fsdp)
    except ValueError as exc:
        option = "--num_devices" if "num_devices" in str(exc) else "--mesh_fsdp"
        raise ConfigError(f"{option}: {exc}") from None
    if config.batch_size % mesh.size:
        raise ConfigError(f"--batch_size: must be divisible by the {mesh.size} devices of the "
                          f"mesh (data x fsdp), got {config.batch_size}")
    return mesh


def _make_dataset(config: TrainConfig, rows: np.ndarray, echo) -> Dataset:
    t0 = time.perf_counter()
    dataset = make_dataset(config, None if len(rows) == config.batch_size else rows)
    info = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                     for k, v in dataset.info.items())
    echo(f"  data: {config.data} ({info}) in {time.perf_counter() - t0:.1f} s")
    if dataset.entropy is not None:
        echo(f"  unigram entropy of the training tokens: {dataset.entropy:.4f} nats "
             f"({dataset.entropy / math.log(2):.3f} bits) per token")
    return dataset


def _restore_or_init(config, ckpt, mesh, init_fn, state_sh, echo) -> tuple[dict, int]:
    """`(state, start)`: the newest intact checkpoint's state and step when resuming (damaged
    newer ones are reported and set aside), else a fresh state and 0."""
    step = ckpt.resume_step(report=lambda line: echo(f"  {line}")) if config.resume else None
    if config.resume and step is None:
        echo(f"  --resume: no checkpoint in {config.run_path}, starting from step 0")
    if step is None:
        t0 = time.perf_counter()
        state = put_from_host(run_on_host(init_fn), state_sh)
        echo(f"  initialised the model and optimizer state in {time.perf_counter() - t0:.1f} s")
        return state, 0
    meta = ckpt.read_meta(step)
    saved_model = meta.get("config", {}).get("model")
    if saved_model is not None:
        diff = model_differences(saved_model, config.to_dict()["model"])
        if diff:
            raise ConfigError(f"--resume: checkpoint step {step} holds another model "
                              f"({'; '.join(diff)}); drop the model options that differ, or "
                              f"start a new run with another --run_dir")
    abstract = jax.eval_shape(init_fn)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
    with jax.set_mesh(mesh):
        state = ckpt.restore(step, target)
    echo(f"  resumed from {ckpt.step_dir(step)} at step {step}")
    return state, int(meta["step"])


def _compile(config, mesh, state, state_sh, batch_sh, example_batch, graphdef, constants, tx,
             echo):
    """The train and eval steps compiled ahead of time for batches laid out as `example_batch`,
    and the train step's compile seconds."""
    B, T = config.batch_size, config.seq_len
    # The dataset's batch layout: inputs, targets, weights (and segment_ids for packed rows).
    batch_abstract = {k: jax.ShapeDtypeStruct((B, T), v.dtype, sharding=batch_sh)
                      for k, v in example_batch.items()}
    replicated = NamedSharding(mesh, P())
    step_fn = jax.jit(make_train_step(graphdef, constants, tx, lr_schedule(config),
                                      config.loss_chunk),
                      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                      donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(graphdef, constants, config.loss_chunk),
                      in_shardings=(state_sh["params"], batch_sh), out_shardings=replicated)
    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch_abstract).compile()
        compile_s = time.perf_counter() - t0
        echo(f"  compiled the train step in {compile_s:.1f} s: {_memory_line(compiled)}")
        t0 = time.perf_counter()
        compiled_eval = eval_fn.lower(state["params"], batch_abstract).compile()
        echo(f"  compiled the eval step in {time.perf_counter() - t0:.1f} s")
    return compiled, compiled_eval, compile_s


# --------------------------------------------------------------------------------------------
# The step loop.


class OneStepBehind:
    """Hands each step's metrics to `consume(step, metrics)` one step late: fetching them waits
    for that step to finish, which then overlaps the next step, already queued on the device.
    `flush()` hands over the pending step now (before an evaluation or a save)."""

    def __init__(self, consume: Callable[[int, dict], None]):
        self._consume = consume
        self._pending: tuple[int, dict] | None = None

    def push(self, step: int, metrics: dict):
        previous, self._pending = self._pending, (step, metrics)
        if previous is not None:
            self._consume(*previous)

    def flush(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._consume(*pending)


@dataclasses.dataclass
class Steps:
    """What the loop did: losses by step, evaluation records, checkpointed steps, seconds."""

    losses: dict[int, float]
    evals: list[dict]
    saved: list[int]
    loop_s: float


class StepRecorder:
    """The host side of a finished step: guard, throughput, progress, the log."""

    def __init__(self, run: Run, progress: M.Progress):
        self.run, self.progress = run, progress
        self.guard = DivergenceGuard(run.config.spike_factor, run.config.spike_window)
        self.losses: dict[int, float] = {}
        self.window: list[float] = []  # losses since the last log record
        self.last_good = run.start or None  # the restored checkpoint, if any
        self.t_loop = time.perf_counter()

    def record(self, step: int, metrics: dict):
        run, config = self.run, self.run.config
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        run.throughput.step_done(step, run.start + 1)
        why = self.guard.check(m["loss"], m["grad_norm"])
        if why is not None:
            run.log.write({"event": "diverged", "step": step, "loss": m["loss"],
                           "grad_norm": m["grad_norm"], "reason": why})
            good = self.last_good
            path = None if good is None or run.ckpt is None else str(run.ckpt.step_dir(good))
            raise TrainingDiverged(step, why, good, path)
        self.losses[step] = m["loss"]
        self.window.append(m["loss"])
        is_log = step % config.log_every == 0 or step == config.steps
        rates = run.throughput.rates(config.log_every)
        postfix = {"loss": f"{m['loss']:.4f}", "tok/s": M.fmt(rates["tokens_per_s"], ",.0f")}
        if run.peak is not None:
            postfix["MFU"] = "n/a" if rates["mfu"] is None else f"{100 * rates['mfu']:.1f}%"
        else:
            postfix["TFLOP/s"] = M.fmt(rates["tflops_per_device"], ".3g")
        if run.dataset.has_accuracy:
            postfix["acc"] = f"{m['accuracy']:.3f}"
        self.progress.update(step, postfix, line=is_log)
        if is_log:
            record = {"event": "train", "step": step, "loss": m["loss"],
                      "loss_avg": float(np.mean(self.window)), "grad_norm": m["grad_norm"],
                      "lr": m["lr"], **{k: v for k, v in rates.items() if k != "timed_steps"},
                      "elapsed_s": time.perf_counter() - self.t_loop}
            if run.dataset.has_accuracy:
                record["accuracy"] = m["accuracy"]
            run.log.write(record)
            self.window.clear()


def evaluate(run: Run, step: int, params) -> dict:
    """The loss (and MQAR accuracy) over the fixed validation batches."""
    sums = np.zeros(3)
    for b in run.val_batches:
        sums += np.asarray(jax.device_get(run.eval_step(params, b)), np.float64)
    record = {"event": "eval", "step": step, "val_loss": float(sums[0] / max(sums[1], 1.0))}
    if run.dataset.has_accuracy:
        record["val_accuracy"] = float(sums[2] / max(sums[1], 1.0))
    return record


def run_steps(run: Run, on_step: StepHook | None = None) -> Steps:
    """Steps `run.start + 1 .. config.steps`: train, evaluate every `eval_every` steps and at
    the end, save every `save_every` steps and at the end. Leaves the final state in
    `run.state`; raises `TrainingDiverged` before evaluating or saving a diverged step."""
    config = run.config
    progress = M.Progress(config.progress if run.main else "off", config.steps, run.start)
    recorder = StepRecorder(run, progress)
    behind = OneStepBehind(recorder.record)
    evals, saved = [], []
    state = run.state
    prefetch = Prefetcher(run.dataset, run.start + 1, config.steps,
                          lambda b: put_rows(b, run.rows, run.batch_sharding, config.batch_size))
    run.throughput.pause()
    try:
        with jax.set_mesh(run.mesh):
            for step in range(run.start + 1, config.steps + 1):
                got, batch = next(prefetch)
                assert got == step, (got, step)
                state, metrics = run.train_step(state, batch)
                if on_step is not None:
                    metrics = on_step(step, metrics)
                behind.push(step, metrics)
                last = step == config.steps
                do_eval = step % config.eval_every == 0 or last
                do_save = run.ckpt is not None and config.checkpoint and (
                    last or (config.save_every and step % config.save_every == 0))
                if not (do_eval or do_save or last):
                    continue
                behind.flush()  # the guard passes this step before it is evaluated or saved
                if do_eval:
                    record = evaluate(run, step, state["params"])
                    evals.append(record)
                    run.log.write(record)
                    acc = record.get("val_accuracy")
                    progress.write(f"step {step}: val loss {record['val_loss']:.4f}"
                                   + (f", val accuracy {acc:.3f}" if acc is not None else ""))
                if do_save:
                    meta = {"step": step, "data": {"kind": config.data, "seed": config.seed,
                                                   "next_step": step + 1},
                            "config": config.to_dict()}
                    path = run.ckpt.save(step, state, meta)
                    saved.append(step)
                    recorder.last_good = step
                    progress.write(f"step {step}: saved {path}")
                run.throughput.pause()
    finally:
        prefetch.close()
        progress.close()
    run.state = state
    return Steps(losses=recorder.losses, evals=evals, saved=saved,
                 loop_s=time.perf_counter() - recorder.t_loop)


# --------------------------------------------------------------------------------------------
# The summary.


def summarize(run: Run, steps: Steps, echo=print) -> dict:
    """Write summary.json and the plot, print the closing lines, return the result dict."""
    config, dataset = run.config, run.dataset
    rates = run.throughput.rates()
    peak_mem = M.peak_memory_bytes()
    final_eval = steps.evals[-1] if steps.evals else None
    n_dev, kind = run.mesh.size, M.device_kind()
    B, T = config.batch_size, config.seq_len
    summary = {
        "run_dir": str(run.run_dir), "preset": config.preset, "data": config.data,
        "device": kind, "num_devices": n_dev, "num_processes": jax.process_count(),
        "batch_size": B, "seq_len": T,
        "steps_run": len(steps.losses), "last_step": config.steps, "params": run.n_params,
        "flops_per_token": run.flops_per_token, "flops_source": run.flops_source,
        "six_n_flops_per_token": 6 * run.n_params, **rates,
        "mfu_6n": (None if rates["tokens_per_s"] is None or run.peak is None
                   else 6 * run.n_params * rates["tokens_per_s"] / (n_dev * run.peak)),
        "peak_memory_bytes": peak_mem, "compile_s": run.compile_s, "train_loop_s": steps.loop_s,
        "total_s": time.perf_counter() - run.t_start,
        "final_loss": steps.losses[max(steps.losses)] if steps.losses else None,
        "final_val_loss": None if final_eval is None else final_eval["val_loss"],
        "final_val_accuracy": None if final_eval is None else final_eval.get("val_accuracy"),
        "unigram_entropy": dataset.entropy, "checkpoints": steps.saved,
    }
    if run.main:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _finish_files(run, echo)
    mem = "n/a" if peak_mem is None else f"{peak_mem / M.GiB:.2f} GiB"
    val = "" if final_eval is None else f", val loss {final_eval['val_loss']:.4f}"
    if final_eval is not None and "val_accuracy" in final_eval:
        val += f", val accuracy {final_eval['val_accuracy']:.3f}"
    if dataset.entropy is not None and final_eval is not None:
        val += f" (unigram entropy {dataset.entropy:.4f})"
    echo(f"trained steps {run.start + 1}-{config.steps} in {steps.loop_s:.1f} s (compile "
         f"{run.compile_s:.1f} s, total {summary['total_s']:.1f} s){val}")
    echo(f"summary: {config.preset} B={B} T={T} on {n_dev} x {kind}: {M.fmt_rate(rates)} "
         f"(after {config.timing_warmup} warm-up steps, {rates['timed_steps']} timed), peak "
         f"memory {mem}, final loss {M.fmt(summary['final_loss'], '.4f')}")
    return {"losses": steps.losses, "evals": steps.evals, "summary": summary,
            "run_dir": run.run_dir, "state": run.state}


def _finish_files(run: Run, echo=print):
    config = run.config
    if not run.main:
        return
    if config.plot and importlib.util.find_spec("matplotlib") is None:
        echo("curves.png not written: matplotlib is not installed (pip install 'jaxla[plots]')")
    elif config.plot:
        path = M.plot_curves(run.log.read(), run.run_dir / "curves.png",
                             entropy=run.dataset.entropy,
                             title=f"{config.run_name}: {config.preset} on {config.data}")
        if path is None:
            (run.run_dir / "curves.png").unlink(missing_ok=True)
    _copy_to_out(run.run_dir, config.run_name)


def main(argv: list[str] | None = None) -> int:
    """`python -m train ARGS`. Exit status 0: the run finished; 1: it diverged (the line says
    which checkpoint is good); 2: a bad option, data or run folder, said in one line.

    With `--distributed`, this process joins the others (`train.distributed.initialize`) before
    anything else touches a device."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        launch = parse_launch_args(argv)
        if launch.distributed:
            print(f"{PROG}: joining a run of several processes (coordinator "
                  f"{launch.coordinator_address or 'detected by JAX'}; waiting up to "
                  f"{launch.init_timeout} s for every process)", flush=True)
            initialize(launch)
        train(parse_args(argv))
    except (ConfigError, DataError, CheckpointError, LaunchError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
