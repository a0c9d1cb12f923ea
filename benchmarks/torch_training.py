"""PyTorch anchors' training throughput, timed the way `benchmarks.training` times jaxla.

    python3 -m benchmarks.torch_training --model fla_gla_340m --batch_size 8 --seq_len 2048

Models (imported only when asked for; the GPU image has torch, triton and transformers, FLA and
mamba_ssm come as carried wheels / a build):
* `fla_gla_340m`: FLA's `GLAForCausalLM` at jaxla's `gla_340m` sizes (hidden 1024, 24 layers,
  4 heads, expand_k 0.5, expand_v 1, SwiGLU x4, vocab 32000, tied embeddings, norm eps 1e-6).
* `mamba_ssm_370m`: mamba_ssm's `MambaLMHeadModel` (d_model 1024, 48 layers, vocab 50280, tied)
  with its CUDA kernels.
* `hf_llama_340m`: transformers' `LlamaForCausalLM` with PyTorch's SDPA attention, its config
  made from jaxla's `transformer_340m` preset (RoPE, SwiGLU, RMSNorm, no biases: the same
  architecture and parameter count).
* `hf_minimax_hybrid_340m`, `hf_minimax_lightning_340m`: transformers' `MiniMaxForCausalLM`
  (MiniMax-01's lightning attention in plain PyTorch, block by block) with the config that
  `jaxla.convert` exports for the `minimax_hybrid_340m` / `lightning_340m` preset with
  `MINIMAX_FIELDS` (MiniMax's block wiring, a one-expert MoE MLP, the lightning norm's fixed eps):
  `benchmarks.training` trains the preset with those fields beside it.
The Hugging Face configs come from the jaxla presets (importing jaxla, not running it), so the
two sides cannot drift apart.
The setting of FLA's `benchmark_training_throughput.py`: bf16 weights, fused AdamW (lr 3e-4,
betas 0.9/0.95, weight decay 0.1), random tokens as inputs and labels, one synchronised step at a
time; tokens/s over the steps after `--warmup` (the first compile and autotune Triton kernels).
Prints `RESULT {json}`: tokens_per_s, step_ms, params, peak_memory_bytes
(`torch.cuda.max_memory_allocated`); with `--profile N` then `PROFILE {json}`: device_ms_per_step,
the kernels' summed time per step of N traced steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _fla_gla_340m(torch):
    from fla.models import GLAConfig, GLAForCausalLM

    config = GLAConfig(hidden_size=1024, num_hidden_layers=24, num_heads=4, expand_k=0.5,
                       expand_v=1.0, hidden_ratio=4, vocab_size=32000, norm_eps=1e-6,
                       tie_word_embeddings=True)
    return GLAForCausalLM(config), config.vocab_size


def _mamba_ssm_370m(torch):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = MambaConfig(d_model=1024, n_layer=48, vocab_size=50280, tie_embeddings=True)
    return MambaLMHeadModel(config), config.vocab_size


# The fields a MiniMax anchor's jaxla preset takes to be transformers' `MiniMaxForCausalLM`
# (`jaxla.convert.minimax.config_to_hf` refuses anything else).
MINIMAX_FIELDS = dict(block_style="minimax", num_experts=1, num_experts_per_tok=1,
                      lightning_norm_eps=1e-6)


def _hf_llama(torch, preset="transformer_340m", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    from jaxla.models.config import LMConfig

    c = LMConfig.preset(preset, **overrides)
    if set(c.layer_pattern) != {"attention"} or not c.mlp or c.num_experts:
        raise ValueError(f"{preset}: a Llama anchor needs attention layers with a SwiGLU MLP")
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.mlp_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.kv_heads, head_dim=c.attn_head_dim, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings, initializer_range=c.initializer_range,
        max_position_embeddings=8192, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config), c.vocab_size


def _hf_minimax(torch, preset, **overrides):
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    from jaxla.convert.minimax import config_to_hf
    from jaxla.models.config import LMConfig

    c = LMConfig.preset(preset, **(MINIMAX_FIELDS | overrides))
    config = MiniMaxConfig.from_dict(config_to_hf(c, eos_token_id=None))
    config._attn_implementation = "sdpa"
    return MiniMaxForCausalLM(config), c.vocab_size


MODELS = {
    "fla_gla_340m": _fla_gla_340m,
    "mamba_ssm_370m": _mamba_ssm_370m,
    "hf_llama_340m": _hf_llama,
    "hf_minimax_hybrid_340m": lambda torch: _hf_minimax(torch, "minimax_hybrid_340m"),
    "hf_minimax_lightning_340m": lambda torch: _hf_minimax(torch, "lightning_340m"),
}
# Each anchor's jaxla preset, and the LMConfig fields that preset takes beside it.
PRESET_OF = {
    "fla_gla_340m": ("gla_340m", {}),
    "mamba_ssm_370m": ("mamba_370m", {}),
    "hf_llama_340m": ("transformer_340m", {}),
    "hf_minimax_hybrid_340m": ("minimax_hybrid_340m", MINIMAX_FIELDS),
    "hf_minimax_lightning_340m": ("lightning_340m", MINIMAX_FIELDS),
}


def _loss(name, model, tokens):
    """The mean next-token cross-entropy (FLA's and transformers' models shift the labels
    themselves)."""
    if name != "mamba_ssm_370m":
        return model(input_ids=tokens, labels=tokens).loss
    import torch.nn.functional as F

    logits = model(tokens).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.torch_training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(MODELS), required=True)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the run, trace N more steps with torch.profiler and print their "
                        "CUDA time by kernel (benchmarks.step_profile is jaxla's counterpart)")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup must be in [0, --steps), got {args.warmup}, {args.steps}")
    if args.profile < 0:
        p.error(f"--profile must be >= 0, got {args.profile}")

    # The Hugging Face anchors read jaxla's presets, which imports jax: keep it off the GPU.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import torch

    model, vocab = MODELS[args.model](torch)
    model = model.cuda().to(torch.bfloat16)
    params = sum(x.numel() for x in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.reset_peak_memory_stats()

    def train_step():
        tokens = torch.randint(0, vocab, (args.batch_size, args.seq_len), device="cuda",
                               generator=gen)
        loss = _loss(args.model, model, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    start = None
    for step in range(args.steps):
        if step == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = train_step()
        torch.cuda.synchronize()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - start
    timed = args.steps - args.warmup
    result = dict(tokens_per_s=timed * args.batch_size * args.seq_len / elapsed,
                  step_ms=1e3 * elapsed / timed, params=params,
                  peak_memory_bytes=int(torch.cuda.max_memory_allocated()))
    print("RESULT " + json.dumps(result), flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.profile):
                train_step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        print(f"CUDA time of {args.profile} steps by kernel (divide by {args.profile} for a step):")
        print(events.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
        # The GPU's busy time per step: against step_ms it tells whether the step is bound by
        # the GPU or by the host launching kernels.
        device_us = sum(getattr(e, "self_device_time_total", None)
                        or getattr(e, "self_cuda_time_total", 0) for e in events)
        print("PROFILE " + json.dumps({"steps": args.profile,
                                       "device_ms_per_step": device_us / 1e3 / args.profile}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
