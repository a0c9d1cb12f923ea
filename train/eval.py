"""`python -m train.eval`: loss, perplexity and bits per byte of a model on held-out text.

    python -m train.eval --run_dir runs/default-stdlib --data held_out/
    python -m train.eval --run_dir models/gla-340M --data tokens.bin

`--run_dir` is a run folder (newest checkpoint), a jaxla model folder or a Hugging Face folder
jaxla.convert imports. `--data` is a text file or folder, or a token file written by
`python -m train.tokenize` (with its `<file>.json`), or a `.npy` token array.

What is evaluated, precisely:

* The token stream. Text through a tokenizer (the model's `tokenizer.json`, or `--tokenizer`):
  the separator (EOS), then each document's tokens followed by the separator; documents are
  the files in sorted path order. Text without a tokenizer (byte-level models): the files'
  bytes concatenated in sorted path order. A token file: the separator its sidecar names, then
  its tokens. `--max_tokens` keeps the first N tokens of the stream.
* The targets: every token of the stream but the first, which is only context. The stream is
  cut into consecutive windows of `--seq_len` targets; each window's model input is the token
  before its first target and the targets but the last (the context restarts at every window,
  as in training); a short last window is padded and its padding left out.
* loss: the mean next-token cross-entropy over the targets, in nats; perplexity = exp(loss).
* bits per byte: the summed cross-entropy in bits divided by the number of UTF-8 bytes the
  targets stand for: the documents' bytes with a tokenizer (separators stand for none), the
  targets' count for bytes, `num_bytes` of a token file's sidecar. Left out (n/a) when
  `--max_tokens` cut the stream or a token file does not record its bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from jaxla.tokenizer import ByteTokenizer, check_vocab, load_tokenizer


def token_stream(data: Path, tokenizer) -> tuple[np.ndarray, int | None]:
    """`(stream int64 [n], UTF-8 bytes of the targets or None)` as the module docstring says."""
    from train.tokenize import encode_documents, input_files, read_documents, separator_of

    if data.suffix == ".npy":
        return np.load(data).astype(np.int64).reshape(-1), None
    sidecar = data.with_name(data.name + ".json")
    if data.is_file() and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        tokens = np.fromfile(data, np.dtype(meta["dtype"]).newbyteorder("<")).astype(np.int64)
        return np.concatenate([[meta["separator_id"]], tokens]), meta.get("num_bytes")
    files = input_files([str(data)])
    if not files:
        raise ValueError(f"no text files under {str(data)!r}")
    if isinstance(tokenizer, ByteTokenizer):
        stream = np.concatenate([np.frombuffer(p.read_bytes(), np.uint8) for p in files])
        return stream.astype(np.int64), len(stream) - 1
    sep = separator_of(tokenizer)
    tokens, _, nbytes = encode_documents(tokenizer, read_documents(files), sep)
    return np.concatenate([[sep], tokens]), nbytes


def evaluate(model, stream: np.ndarray, seq_len: int, batch_size: int) -> tuple[float, int]:
    """`(summed cross-entropy in nats, number of targets)` of `stream` under `model`."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    n_targets = len(stream) - 1
    windows = -(-n_targets // seq_len)
    graphdef, state = nnx.split(model)

    @jax.jit
    def batch_loss(state, inputs, targets, weights):
        logits = nnx.merge(graphdef, state)(inputs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return jnp.sum(ce * weights)

    total = 0.0
    for first in range(0, windows, batch_size):
        inputs = np.zeros((batch_size, seq_len), np.int32)
        targets = np.zeros((batch_size, seq_len), np.int32)
        weights = np.zeros((batch_size, seq_len), np.float32)
        for row, w in enumerate(range(first, min(first + batch_size, windows))):
            chunk = stream[w * seq_len:w * seq_len + seq_len + 1]
            n = len(chunk) - 1
            inputs[row, :n], targets[row, :n], weights[row, :n] = chunk[:-1], chunk[1:], 1.0
        total += float(batch_loss(state, inputs, targets, weights))
    return total, n_targets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", required=True, help="run folder, jaxla model folder or Hugging "
                   "Face folder")
    p.add_argument("--data", required=True, help="text file or folder, token file (with its "
                   ".json) or .npy")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json for text (default: the "
                   "model's, else UTF-8 bytes)")
    p.add_argument("--seq_len", type=int, default=256, help="targets per window (default: 256)")
    p.add_argument("--batch_size", type=int, default=8, help="windows per batch (default: 8)")
    p.add_argument("--max_tokens", type=int, default=None, help="evaluate only the first N "
                   "tokens of the stream")
    p.add_argument("--step", type=int, default=None, help="run folder: checkpoint step")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch_size", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "max_tokens" else 1):
            parser.error(f"--{name} must be >= {2 if name == 'max_tokens' else 1}, got {value}")
    from jaxla.convert import load_pretrained

    try:
        loaded = load_pretrained(args.run_dir, step=args.step)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--run_dir {args.run_dir}: {exc}")
    tok_file = args.tokenizer or loaded.tokenizer_file
    try:
        tokenizer = load_tokenizer(tok_file)
        check_vocab(tokenizer, loaded.config.vocab_size)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--tokenizer {tok_file}: {exc}")
    data = Path(args.data)
    if not data.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    try:
        stream, nbytes = token_stream(data, tokenizer)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--data {args.data}: {exc}")
    if args.max_tokens is not None and args.max_tokens < len(stream):
        stream, nbytes = stream[:args.max_tokens], None
    if len(stream) < 2:
        parser.error(f"--data {args.data}: fewer than 2 tokens")
    if stream.max() >= loaded.config.vocab_size:
        parser.error(f"--data {args.data}: token id {int(stream.max())} >= the model's "
                     f"vocab_size={loaded.config.vocab_size}")
    total, n = evaluate(loaded.model, stream, args.seq_len, args.batch_size)
    loss = total / n
    bpb = "n/a" if nbytes is None else f"{total / math.log(2) / nbytes:.4f}"
    print(f"{args.run_dir} on {args.data}: {n:,} target tokens"
          + ("" if nbytes is None else f", {nbytes:,} bytes"))
    print(f"loss {loss:.4f} nats/token, perplexity {math.exp(loss):.3f}, bits per byte {bpb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
