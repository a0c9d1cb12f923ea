"""`python -m train.eval`: loss, perplexity and bits per byte of a model on held-out text.

    python -m train.eval --run_dir runs/default-stdlib --data held_out/
    python -m train.eval --run_dir models/gla-340M --data tokens.bin

`--run_dir` is a run folder (newest checkpoint), a jaxla model folder or a Hugging Face folder
jaxla.convert imports. `--data` is a text file or folder, or a token file written by
`python -m train.tokenize` (with its `<file>.json`), or a `.npy` token array.

What is evaluated, precisely:

* The token stream: the separator, then each document's tokens followed by the separator, as
  `python -m train` packs documents. Text: documents are the files in sorted path order, their
  tokens through a tokenizer (the model's `tokenizer.json`, or `--tokenizer`; the separator is
  its EOS) or, for byte-level models, their bytes (the separator is byte 0). A token file: the
  separator its sidecar names, then its tokens (a file without a separator, or a `.npy`: its
  tokens, one stream). `--max_tokens` keeps the first N tokens of the stream.
* The targets: every token of the stream but the first, which is only context. The stream is
  cut into consecutive windows of `--seq_len` targets; each window's model input is the token
  before its first target and the targets but the last (the context restarts at every window,
  as in training); a short last window is padded and its padding left out.
* Packed documents, as in training: a new document starts at every separator of a window's
  input (and at the window start), and the model sees each document alone (`segment_ids`).
  So a document's tokens are predicted from the separator before them and its own earlier
  tokens, and the separator after it from the document: every target counts.
* loss: the mean next-token cross-entropy over the targets, in nats; perplexity = exp(loss).
* bits per byte: the summed cross-entropy in bits divided by the number of UTF-8 bytes the
  targets stand for: the documents' bytes (separators stand for none), `num_bytes` of a token
  file's sidecar. Left out (n/a) when `--max_tokens` cut the stream or a token file does not
  record its bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from jaxla.tokenizer import ByteTokenizer, check_vocab, load_tokenizer


def token_stream(data: Path, tokenizer) -> tuple[np.ndarray, int | None, int | None]:
    """`(stream int64 [n], UTF-8 bytes of the targets or None, separator or None)` as the module
    docstring says."""
    from .tokenize import (
        BYTE_SEPARATOR,
        encode_documents,
        input_files,
        read_documents,
        read_sidecar,
        separator_of,
    )

    meta = read_sidecar(data) if data.is_file() else None
    if data.suffix == ".npy":
        tokens = np.load(data).astype(np.int64).reshape(-1)
        nbytes = None
    elif meta is not None:
        dtype = np.dtype(meta.get("dtype") or "uint16").newbyteorder("<")
        tokens, nbytes = np.fromfile(data, dtype).astype(np.int64), meta.get("num_bytes")
    else:
        files = input_files([str(data)])
        if not files:
            raise ValueError(f"no text files under {str(data)!r}")
        if isinstance(tokenizer, ByteTokenizer):
            sep = BYTE_SEPARATOR
            docs = [p.read_bytes() for p in files]
            for path, doc in zip(files, docs, strict=True):
                if sep in doc:  # as python -m train refuses it
                    raise ValueError(f"{str(path)!r} has a NUL byte at offset "
                                     f"{doc.index(sep)}, the separator of byte-level documents")
            tokens = np.frombuffer(b"".join(d + bytes([sep]) for d in docs), np.uint8)
            nbytes = sum(len(d) for d in docs)
        else:
            sep = separator_of(tokenizer)
            tokens, _, nbytes = encode_documents(tokenizer, read_documents(files), sep)
        return np.concatenate([[sep], tokens]).astype(np.int64), nbytes, sep
    sep = None if meta is None else meta.get("separator_id")
    if sep is None:
        return tokens, nbytes, None
    return np.concatenate([[sep], tokens]), nbytes, sep


def evaluate(model, stream: np.ndarray, seq_len: int, batch_size: int,
             separator: int | None = None) -> tuple[float, int]:
    """`(summed cross-entropy in nats, number of targets)` of `stream` under `model`; with a
    `separator`, each window's documents are packed (`train.data.segment_ids_of`)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from .data import segment_ids_of

    n_targets = len(stream) - 1
    windows = -(-n_targets // seq_len)
    graphdef, state = nnx.split(model)

    @jax.jit
    def batch_loss(state, inputs, targets, weights, segment_ids):
        logits = nnx.merge(graphdef, state)(inputs, segment_ids=segment_ids)
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
        segment_ids = None if separator is None else segment_ids_of(inputs, separator)
        total += float(batch_loss(state, inputs, targets, weights, segment_ids))
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
        stream, nbytes, separator = token_stream(data, tokenizer)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--data {args.data}: {exc}")
    if args.max_tokens is not None and args.max_tokens < len(stream):
        stream, nbytes = stream[:args.max_tokens], None
    if len(stream) < 2:
        parser.error(f"--data {args.data}: fewer than 2 tokens")
    if stream.max() >= loaded.config.vocab_size:
        parser.error(f"--data {args.data}: token id {int(stream.max())} >= the model's "
                     f"vocab_size={loaded.config.vocab_size}")
    total, n = evaluate(loaded.model, stream, args.seq_len, args.batch_size, separator)
    loss = total / n
    bpb = "n/a" if nbytes is None else f"{total / math.log(2) / nbytes:.4f}"
    print(f"{args.run_dir} on {args.data}: {n:,} target tokens"
          + ("" if nbytes is None else f", {nbytes:,} bytes"))
    print(f"loss {loss:.4f} nats/token, perplexity {math.exp(loss):.3f}, bits per byte {bpb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
