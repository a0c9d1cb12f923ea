"""Tokenizers, `python -m train.tokenize`, `--tokenizer` training, `python -m train.eval` and
`python -m jaxla.generate` on run folders."""

import io
import json
import math

import numpy as np
import pytest

from jaxla.generate import main as generate_main
from jaxla.tokenizer import ByteTokenizer, load_tokenizer, train_bpe
from train import main as train_main
from train.config import parse_args
from train.data import make_dataset, stdlib_files, tokenized_corpus
from train.eval import main as eval_main
from train.tokenize import main as tokenize_main

from .test_packing import check_packed_rows

VOCAB = 320


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    """A byte-level BPE trained on 40 standard-library files (no download)."""
    files = stdlib_files()[:40]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe((p.read_text(errors="replace") for p in files), VOCAB).save(str(path))
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A folder of three small text documents (standard-library sources)."""
    folder = tmp_path_factory.mktemp("texts")
    for i, p in enumerate(stdlib_files()[100:103]):
        (folder / f"doc{i}.py").write_text(p.read_text(errors="replace")[:6000])
    return folder


def _run(fn, argv, capsys):
    code = fn(argv)
    return code, capsys.readouterr()


def test_tokenizers_round_trip(bpe_file, rng):
    tok = load_tokenizer(bpe_file)
    assert tok.vocab_size == VOCAB and tok.eos_id == 0  # the special token comes first
    text = "def héllo(x):\n    return x ** 2  # ünïcode ✓ " + str(rng.integers(1 << 30))
    ids = tok.encode(text)
    assert max(ids) < VOCAB and tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learnt
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(text)) == text
    feed = byte.stream_decoder()
    raw = byte.encode(text)
    assert "".join(feed(raw[i:i + 3]) for i in range(0, len(raw), 3)) == text


def test_tokenize_cli_writes_documents_with_separators(bpe_file, texts, tmp_path, capsys):
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"text": "first line doc"}) + "\n" + json.dumps("second") + "\n")
    out = tmp_path / "tokens.bin"
    code, _ = _run(tokenize_main, ["--tokenizer", str(bpe_file), str(texts), str(jsonl),
                                   "--out", str(out)], capsys)
    assert code == 0
    meta = json.loads((tmp_path / "tokens.bin.json").read_text())
    tokens = np.fromfile(out, np.dtype(meta["dtype"]))
    assert meta["num_documents"] == 5 and meta["num_tokens"] == len(tokens)
    sep = meta["separator_id"]
    assert meta["separator_token"] == "<|endoftext|>" and tokens[-1] == sep
    docs = np.split(tokens, np.flatnonzero(tokens == sep) + 1)[:-1]
    tok = load_tokenizer(bpe_file)
    want = [p.read_text() for p in sorted(texts.iterdir())] + ["first line doc", "second"]
    assert [tok.decode(d[:-1]) for d in docs] == want
    assert meta["num_bytes"] == sum(len(t.encode()) for t in want)


def test_train_with_tokenizer_then_eval_and_generate(bpe_file, texts, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--preset", "tiny_gla", "--data", "text", "--data_path", str(texts),
            "--tokenizer", str(bpe_file), "--vocab_size", str(VOCAB), "--run_dir", str(run),
            "--steps", "3", "--batch_size", "2", "--seq_len", "32", "--eval_every", "3",
            "--eval_batches", "1", "--progress", "off", "--no-plot", "--num_devices", "1"]
    code, _ = _run(train_main, args, capsys)
    assert code == 0 and (run / "tokenizer.json").is_file()
    code, out = _run(eval_main, ["--run_dir", str(run), "--data", str(texts), "--seq_len",
                                 "64"], capsys)
    loss, ppl, bpb = (float(out.out.split(k)[1].split()[0].strip(",")) for k in
                      ("loss ", "perplexity ", "bits per byte "))
    assert math.isclose(ppl, math.exp(loss), rel_tol=1e-3) and 0 < bpb < loss
    buf = io.StringIO()
    assert generate_main([str(run), "--prompt", "import os", "--max_new_tokens", "5",
                          "--greedy"], out=buf) == 0
    assert buf.getvalue().startswith("import os") and len(buf.getvalue()) > len("import os\n")


def test_tokenized_text_is_packed_at_the_tokenizers_eos(bpe_file, texts):
    config = parse_args(["--preset", "tiny_gla", "--data", "text", "--data_path", str(texts),
                         "--tokenizer", str(bpe_file), "--vocab_size", str(VOCAB),
                         "--batch_size", "8", "--seq_len", "256", "--val_fraction", "0.3"],
                        backend="cpu")
    eos = load_tokenizer(bpe_file).eos_id
    train, val, sep, _ = tokenized_corpus(config, VOCAB)  # each file's tokens, then EOS
    assert sep == eos and train[-1] == val[-1] == eos
    assert np.sum(train == eos) + np.sum(val == eos) == len(list(texts.iterdir()))
    ds = make_dataset(config)
    assert ds.info["documents"] == f"one per file, separated by id {eos}"
    for batch in (ds.train_batch(1), *ds.val_batches):
        check_packed_rows(batch, eos, one_id_documents=False)


def test_tokenizer_larger_than_the_vocabulary_is_one_error(bpe_file, texts, tmp_path, capsys):
    args = ["--data", "text", "--data_path", str(texts), "--tokenizer", str(bpe_file),
            "--run_dir", str(tmp_path / "r"), "--steps", "1"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert f"has {VOCAB} tokens, more than the model's vocab_size=256" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, texts):
    """The default model (a byte-level GLA, 0.5M parameters) after 3 steps (on small texts, to
    skip reading the whole standard library)."""
    run = tmp_path_factory.mktemp("default")
    assert train_main(["--run_dir", str(run), "--data", "text", "--data_path", str(texts),
                       "--steps", "3", "--batch_size", "2", "--seq_len",
                       "32", "--eval_every", "3", "--eval_batches", "1", "--progress", "off",
                       "--no-plot", "--num_devices", "1"]) == 0
    return run


def test_generate_cli_streams_from_the_default_run(default_run, bpe_file, capsys):
    buf = io.StringIO()
    assert generate_main([str(default_run), "--prompt", "def main(", "--max_new_tokens", "12",
                          "--block_size", "4", "--seed", "3"], out=buf) == 0
    text = buf.getvalue()
    assert text.startswith("def main(") and text.endswith("\n")
    buf = io.StringIO()
    assert generate_main([str(default_run), "--prompt", "a", "--prompt", "import sys",
                          "--max_new_tokens", "4", "--greedy"], out=buf) == 0
    assert buf.getvalue().count("--- prompt") == 2
    for argv, match in [(["--prompt", ""], "empty prompt"),
                        (["--prompt", "x", "--tokenizer", str(bpe_file)],
                         "more than the model's vocab_size=256")]:
        with pytest.raises(SystemExit) as exc:
            generate_main([str(default_run), *argv])
        assert exc.value.code == 2
        assert match in capsys.readouterr().err


def test_eval_bits_per_byte_of_a_byte_model(default_run, texts, tmp_path, capsys):
    code, out = _run(eval_main, ["--run_dir", str(default_run), "--data", str(texts),
                                 "--seq_len", "128", "--batch_size", "4"], capsys)
    assert code == 0
    loss = float(out.out.split("loss ")[1].split()[0])
    bpb = float(out.out.split("bits per byte ")[1].split()[0])
    # The stream: byte 0, then each document's bytes and byte 0; the separators stand for no
    # bytes.
    files = sorted(texts.iterdir())
    nbytes = sum(len(p.read_bytes()) for p in files)
    n = nbytes + len(files)
    assert f"{n:,} target tokens, {nbytes:,} bytes" in out.out
    assert math.isclose(bpb, loss * n / nbytes / math.log(2), rel_tol=1e-3)
    # The same documents as a token file of python -m train.tokenize score the same.
    tokens = tmp_path / "tokens.bin"
    assert tokenize_main([str(texts), "--out", str(tokens)]) == 0
    capsys.readouterr()
    code, out_tokens = _run(eval_main, ["--run_dir", str(default_run), "--data", str(tokens),
                                        "--seq_len", "128", "--batch_size", "4"], capsys)
    assert code == 0
    assert out_tokens.out.split(f"{tokens}: ")[1] == out.out.split(f"{texts}: ")[1]
