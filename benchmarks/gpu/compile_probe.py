"""Where does compile time go? Each case in its own process with a time limit; one line each.
(Compile times only: kernel speed is `python -m benchmarks.kernels`, training speed
`python -m benchmarks.training`.)

    PYTHONPATH=. python3 -m benchmarks.gpu.compile_probe [--cases a,b] [--limit 100]

Cases time `jax.jit(f).lower(...)` and `.compile()` of: the GLA op's forward+backward with the
Pallas kernels at gla_340m's head shape (K=128, V=256) and at K=V=128; a 2-layer model of a preset
(loss and gradients), with the Pallas kernels, with the xla path, and with XLA's autotuner off.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CASES = {
    "gla_op_k128_v256": "op gla 4 128 256",
    "gla_op_k128_v128": "op gla 8 128 128",
    "gla_2l_pallas": "model gla_340m 2 pallas",
    "gla_2l_xla": "model gla_340m 2 xla",
    "gla_2l_noautotune": "model gla_340m 2 pallas noautotune",
    "gla_8l_pallas": "model gla_340m 8 pallas",
    "transformer_2l": "model transformer_340m 2 pallas",
    "mamba_2l_pallas": "model mamba_370m 2 pallas",
}


def run_case(spec: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    parts = spec.split()
    t0 = time.perf_counter()
    if parts[0] == "op":
        from jaxla import ops
        H, K, V = map(int, parts[2:5])
        B, T = 8, 2048
        ks = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(ks[0], (B, T, H, K), jnp.bfloat16)
        k = jax.random.normal(ks[1], (B, T, H, K), jnp.bfloat16)
        v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
        g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H, K), jnp.float32)) / 16

        def f(q, k, v, g):
            o, _ = ops.gla(q, k, v, g, implementation="pallas")
            return jnp.sum(o.astype(jnp.float32) ** 2)

        fn, args = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))), (q, k, v, g)
    else:
        from jaxla.models import CausalLM, LMConfig
        cfg = LMConfig.preset(parts[1], num_layers=int(parts[2]), dtype="bfloat16",
                              implementation=parts[3])
        model = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        ids = jax.ShapeDtypeStruct((8, 2048), jnp.int32)

        def loss(state, ids):
            logits = nnx.merge(graphdef, state)(ids)
            return jnp.mean(jax.nn.logsumexp(logits, -1))

        fn, args = jax.jit(jax.value_and_grad(loss)), (state, ids)
    t1 = time.perf_counter()
    lowered = fn.lower(*args)
    t2 = time.perf_counter()
    print(f"  lowered in {t2 - t1:.1f} s", flush=True)
    compiled = lowered.compile()
    t3 = time.perf_counter()
    text = compiled.as_text() or ""
    print(f"RESULT lower {t2 - t1:.1f} s, compile {t3 - t2:.1f} s, setup {t1 - t0:.1f} s, "
          f"custom calls {text.count('custom_call_target=')}, "
          f"triton {text.count('__gpu$xla.gpu.triton')}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--limit", type=float, default=100)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        run_case(CASES[args.one])
        return
    rows = []
    for name in args.cases.split(","):
        env = dict(os.environ)
        if "noautotune" in CASES[name]:
            env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0"
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.compile_probe",
                                   "--one", name], capture_output=True, text=True,
                                  timeout=args.limit, env=env)
            out = proc.stdout + proc.stderr
            res = [line for line in out.splitlines() if line.startswith("RESULT")]
            line = res[-1][7:] if res else f"failed rc {proc.returncode}: {out.strip()[-300:]}"
        except subprocess.TimeoutExpired as exc:
            part = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            line = f"timed out after {args.limit:.0f} s ({part.strip()[-80:]})"
        rows.append(f"{name:20s} {time.perf_counter() - start:6.1f} s wall | {line}")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
