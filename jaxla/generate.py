"""`python -m jaxla.generate PATH --prompt TEXT`: sample text from a trained or converted model.

PATH is a run folder of `python -m train` (its newest checkpoint), a jaxla model folder
(`python -m jaxla.convert import`) or a Hugging Face folder jaxla.convert imports. Text goes
through the model's tokenizer: `tokenizer.json` in PATH or `--tokenizer`, else UTF-8 bytes
(vocab-256 models). One prompt streams its continuation as it is generated; several prompts of
any lengths run as one ragged batch and print when done.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """Examples:
  ./run train && python -m jaxla.generate runs/default-stdlib --prompt 'def main('
  python -m jaxla.generate runs/default-stdlib --prompt 'import os' --prompt 'class ' --greedy
  python -m jaxla.generate models/mamba-130m --prompt 'The capital of France' --top_p 0.9
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxla.generate", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text from a run folder, a jaxla model folder or a Hugging Face "
                    "folder (FLA GLA, transformers Mamba / MiniMax).")
    p.add_argument("path", metavar="PATH", help="run folder, model folder or Hugging Face folder")
    p.add_argument("--prompt", action="append", required=True,
                   help="text to continue (repeat for a batch of prompts)")
    p.add_argument("--max_new_tokens", type=int, default=200, help="tokens per prompt "
                   "(default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature "
                   "(default: 0.8; 0 is greedy)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--top_k", type=int, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--top_p", type=float, default=None, help="sample from the top_p nucleus")
    p.add_argument("--min_p", type=float, default=None,
                   help="drop tokens below min_p times the likeliest token's probability")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in PATH, "
                   "else UTF-8 bytes)")
    p.add_argument("--eos_token_id", type=int, default=None,
                   help="stop a prompt at this token (default: the model's or tokenizer's EOS)")
    p.add_argument("--no_eos", action="store_true", help="never stop before max_new_tokens")
    p.add_argument("--block_size", type=int, default=16,
                   help="tokens per compiled block when streaming (default: 16)")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="print only when the whole continuation is done")
    p.add_argument("--step", type=int, default=None, help="run folder: checkpoint step "
                   "(default: the newest)")
    p.add_argument("--implementation", choices=("pallas", "xla", "naive"), default=None,
                   help="op implementation (default: pallas on GPU, xla elsewhere)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: the model's)")
    return p


def main(argv: list[str] | None = None, out=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    for text in args.prompt:
        if not text:
            parser.error("--prompt '': an empty prompt has nothing to continue")
    if args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.block_size < 1:
        parser.error(f"--block_size must be >= 1, got {args.block_size}")

    from jaxla.convert import load_pretrained
    from jaxla.models import generate, generate_stream
    from jaxla.tokenizer import check_vocab, load_tokenizer

    try:
        loaded = load_pretrained(args.path, step=args.step, implementation=args.implementation,
                                 dtype=args.dtype)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"PATH {args.path}: {exc}")
    tok_file = args.tokenizer or loaded.tokenizer_file
    try:
        tokenizer = load_tokenizer(tok_file)
        check_vocab(tokenizer, loaded.config.vocab_size)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--tokenizer {tok_file}: {exc}")
    prompts = [tokenizer.encode(text) for text in args.prompt]
    for text, ids in zip(args.prompt, prompts, strict=True):
        if not ids:
            parser.error(f"--prompt {text!r} encodes to no tokens")
    eos = args.eos_token_id
    if eos is None:
        eos = loaded.eos_token_id if loaded.eos_token_id is not None else tokenizer.eos_id
    if args.no_eos:
        eos = None
    if eos is not None and not 0 <= eos < loaded.config.vocab_size:
        parser.error(f"--eos_token_id {eos} is outside the vocabulary "
                     f"[0, {loaded.config.vocab_size})")
    greedy = args.greedy or args.temperature == 0
    kw = dict(temperature=0.0 if greedy else args.temperature, top_k=args.top_k,
              top_p=args.top_p, min_p=args.min_p, rng=None if greedy else args.seed,
              eos_token_id=eos)
    try:
        if len(prompts) == 1 and args.stream:
            out.write(args.prompt[0])
            out.flush()
            feed = tokenizer.stream_decoder()
            for block in generate_stream(loaded.model, prompts, args.max_new_tokens,
                                         block_size=args.block_size, **kw):
                out.write(feed(block[0]))
                out.flush()
            out.write("\n")
            return 0
        tokens, lengths = generate(loaded.model, prompts, args.max_new_tokens,
                                   return_lengths=True, **kw)
    except ValueError as exc:
        parser.error(str(exc))
    for i, (text, ids) in enumerate(zip(args.prompt, prompts, strict=True)):
        new = [int(t) for t in tokens[i, len(ids):int(lengths[i])]]
        if len(prompts) > 1:
            out.write(f"--- prompt {i + 1} ---\n")
        out.write(text + tokenizer.decode(new) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
