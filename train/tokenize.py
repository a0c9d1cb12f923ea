"""`python -m train.tokenize`: text files, folders and JSONL into one token file of documents.

    python -m train.tokenize --tokenizer tokenizer.json corpus/ extra.jsonl --out tokens.bin
    python -m train --data tokens --data_path tokens.bin --vocab_size 8192 ...

Documents: every text file (a folder: every text file under it, sorted by path; files with a NUL
byte in their first 8 KiB are skipped as binary) and every line of a `.jsonl` file (its
`--text_field`, or the line itself when it is a JSON string). The output is the documents'
tokens in that order, each document followed by the separator id, as raw little-endian
integers (uint16 when the vocabulary fits, else uint32). Beside it, `<out>.json` records
`dtype`, `separator_id`, `separator_token`, `num_tokens`, `num_documents`, `num_bytes` (UTF-8
bytes of the documents), `vocab_size` and the tokenizer; `python -m train --data tokens` reads
the dtype and `separator_id` from it and packs the rows by document (train/data.py), and
`python -m train.eval` scores each document alone.

The separator is the tokenizer's EOS token (`--eos_token`, else the first of
jaxla.tokenizer.EOS_CANDIDATES it has). Without `--tokenizer` the tokens are UTF-8 bytes
(vocab 256) and the separator is byte 0 (NUL), which text documents do not contain.
`--train_bpe N` first trains a byte-level BPE of N tokens on the inputs and writes it to
`--tokenizer` (no download).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxla.tokenizer import EOS_CANDIDATES, ByteTokenizer, load_tokenizer, train_bpe

BYTE_SEPARATOR = 0
# What `python -m train --data tokens` reads (this program writes the first two).
TOKEN_DTYPES = ("uint16", "uint32", "int32")


def _is_binary(path: Path) -> bool:
    with path.open("rb") as f:
        return b"\0" in f.read(8192)


def input_files(inputs: list[str]) -> list[Path]:
    """The files the inputs name (folders expanded, sorted), or FileNotFoundError."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not _is_binary(p))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {item!r} is neither a file nor a folder")
    return files


def read_documents(files: list[Path], text_field: str = "text") -> Iterator[str]:
    """Each text file whole, each JSONL line's `text_field` (or JSON string)."""
    for path in files:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if isinstance(obj, str):
                        yield obj
                    elif isinstance(obj, dict) and isinstance(obj.get(text_field), str):
                        yield obj[text_field]
                    else:
                        raise ValueError(f"{path}:{n}: expected a JSON string or an object with "
                                         f"a string field {text_field!r}")
        else:
            yield path.read_bytes().decode("utf-8", errors="replace")


def separator_of(tokenizer) -> int:
    if isinstance(tokenizer, ByteTokenizer):
        return BYTE_SEPARATOR
    if tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.name} has no EOS token among "
                         f"{', '.join(EOS_CANDIDATES)}; "
                         f"name its separator with --eos_token")
    return tokenizer.eos_id


def encode_documents(tokenizer, documents, separator: int) -> tuple[np.ndarray, int, int]:
    """`(tokens int64 [n], documents, UTF-8 bytes)`: each document's ids, then `separator`."""
    chunks, docs, nbytes = [], 0, 0
    for text in documents:
        chunks.append(np.asarray(tokenizer.encode(text), np.int64))
        chunks.append(np.asarray([separator], np.int64))
        docs += 1
        nbytes += len(text.encode("utf-8"))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return tokens, docs, nbytes


def token_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_tokens(tokens: np.ndarray, out: Path, meta: dict) -> Path:
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    tokens.astype(dtype).tofile(out)
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return sidecar


def sidecar_path(path: str | Path) -> Path:
    """`<path>.json`: the sidecar of a token file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict | None:
    """The sidecar of the token file `path` (`write_tokens`), or None when it has none.

    Checks what readers use: `dtype` one of TOKEN_DTYPES, `separator_id` an integer >= 0 (or
    null: no separator), `vocab_size` and `num_bytes` integers >= 0, each where present; a
    ValueError names the file and the field."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(side)!r} is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{str(side)!r} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("dtype") is not None and meta["dtype"] not in TOKEN_DTYPES:
        raise ValueError(f"{str(side)!r}: dtype must be one of {', '.join(TOKEN_DTYPES)}, got "
                         f"{meta['dtype']!r}")
    for key in ("separator_id", "vocab_size", "num_bytes"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise ValueError(f"{str(side)!r}: {key} must be an integer >= 0, got {value!r}")
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.tokenize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text file, folder or .jsonl")
    p.add_argument("--out", required=True, help="token file to write (e.g. tokens.bin)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: UTF-8 bytes)")
    p.add_argument("--eos_token", default=None, help="the separator token (default: the "
                   "tokenizer's EOS)")
    p.add_argument("--text_field", default="text", help="JSONL: the field holding the text")
    p.add_argument("--train_bpe", type=int, default=None, metavar="N",
                   help="train a byte-level BPE of N tokens on the inputs first and write it to "
                        "--tokenizer")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        files = input_files(args.inputs)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    if not files:
        parser.error(f"INPUT {' '.join(args.inputs)}: no text files")
    if args.train_bpe is not None:
        if args.tokenizer is None:
            parser.error("--train_bpe needs --tokenizer (where to write the tokenizer)")
        if args.train_bpe < 260:
            parser.error(f"--train_bpe must be >= 260 (256 bytes + specials), got "
                         f"{args.train_bpe}")
        train_bpe(read_documents(files, args.text_field), args.train_bpe).save(args.tokenizer)
        print(f"trained a {args.train_bpe}-token BPE on {len(files)} file(s): {args.tokenizer}")
    try:
        tokenizer = load_tokenizer(args.tokenizer, args.eos_token)
        separator = separator_of(tokenizer)
        tokens, docs, nbytes = encode_documents(
            tokenizer, read_documents(files, args.text_field), separator)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    meta = {"dtype": token_dtype_for(tokenizer.vocab_size), "separator_id": separator,
            "separator_token": (None if isinstance(tokenizer, ByteTokenizer)
                                else tokenizer.tokenizer.id_to_token(separator)),
            "num_tokens": int(len(tokens)), "num_documents": docs, "num_bytes": nbytes,
            "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.name,
            "layout": "each document's tokens followed by separator_id"}
    sidecar = write_tokens(tokens, Path(args.out), meta)
    print(f"{docs} documents, {len(tokens):,} tokens ({meta['dtype']}, separator "
          f"{separator}) -> {args.out} (+ {sidecar.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
