"""Text <-> token ids: UTF-8 bytes (vocab 256) or a Hugging Face `tokenizers` file.

    tok = load_tokenizer("tokenizer.json")   # or load_tokenizer(None): bytes
    ids = tok.encode("def f():")            # list[int]
    tok.decode(ids), tok.vocab_size, tok.eos_id
    check_vocab(tok, model.config.vocab_size)   # ValueError when the model cannot embed its ids

`eos_id` is the document separator (`python -m train.tokenize` writes it after every document
and records it) and the token generation stops at: the tokenizer's first special token among
EOS_CANDIDATES, or None. `train_bpe` trains a small byte-level BPE (tests, corpora without a
tokenizer of their own); it needs only the `tokenizers` package, no download.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from pathlib import Path

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>")


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (jaxla's byte-level models); no EOS token."""

    vocab_size = 256
    eos_id = None
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        """`feed(ids) -> str`: text of the complete UTF-8 characters so far (for streaming)."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: dec.decode(bytes(int(i) for i in ids))


class HFTokenizer:
    """A `tokenizers.Tokenizer` read from a `tokenizer.json`."""

    def __init__(self, path, eos_token: str | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - a declared dependency
            raise ImportError("reading tokenizer.json files needs the 'tokenizers' package: "
                              "pip install tokenizers") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            self.tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception type
            raise ValueError(f"{str(path)!r} is not a tokenizers tokenizer.json: {exc}") from None
        self.name = str(self.path)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if eos_token is not None:
            eos = self.tokenizer.token_to_id(eos_token)
            if eos is None:
                raise ValueError(f"{str(path)!r} has no token {eos_token!r}")
            self.eos_id = eos
        else:
            ids = [self.tokenizer.token_to_id(t) for t in EOS_CANDIDATES]
            self.eos_id = next((i for i in ids if i is not None), None)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def stream_decoder(self):
        """`feed(ids) -> str`: the text the ids fed so far add (decodes the whole prefix and
        returns what is new, so merges across blocks come out right)."""
        seen: list[int] = []
        printed = [""]

        def feed(ids):
            seen.extend(int(i) for i in ids)
            text = self.decode(seen)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
                return ""
            new = text[len(printed[0]):] if text.startswith(printed[0]) else text
            printed[0] = text
            return new

        return feed


def load_tokenizer(path=None, eos_token: str | None = None):
    """`ByteTokenizer()` for None, else the `HFTokenizer` of a tokenizer.json."""
    return ByteTokenizer() if path is None else HFTokenizer(path, eos_token)


def check_vocab(tokenizer, vocab_size: int) -> None:
    """A ValueError when the tokenizer has ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, more "
                         f"than the model's vocab_size={vocab_size}")


def train_bpe(texts: Iterable[str], vocab_size: int, *,
              special_tokens: tuple[str, ...] = ("<|endoftext|>",)):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts` (the special tokens first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
