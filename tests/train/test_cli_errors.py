"""Every class of bad command-line value: `python -m train` prints one line, `train: error: ...`
naming the option and the value, exits with status 2, and leaves no run folder behind."""

import numpy as np
import pytest

from train import loop

from .helpers import corpus, tiny_args


def _files(tmp_path, rng) -> dict:
    """The paths the cases refer to, by name."""
    paths = {"corpus": corpus(tmp_path, rng)}
    (tmp_path / "empty").mkdir()
    paths["empty"] = tmp_path / "empty"
    binary = tmp_path / "tokens.bin"
    rng.integers(0, 256, 4000).astype(np.uint16).tofile(binary)  # NUL bytes: not text
    paths["binary"] = binary
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 na\xefve ".encode("latin-1") * 500)
    paths["latin1"] = latin1
    big_ids = tmp_path / "big_ids.npy"
    ids = rng.integers(0, 256, 3000).astype(np.int32)
    ids[int(rng.integers(0, 3000))] = 300
    np.save(big_ids, ids)
    paths["big_ids"] = big_ids
    odd = tmp_path / "odd.bin"
    odd.write_bytes(rng.bytes(1001))
    paths["odd"] = odd
    short = tmp_path / "short.txt"
    short.write_text("abc " * 30)  # 120 bytes and the separator: 115 train, 6 validation
    paths["short"] = short
    return paths


# (extra options, with {name} for the paths above; what the line must say)
CASES = {
    "not a number": (["--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    "unknown option": (["--stepz", "3"], "unrecognized arguments: --stepz 3"),
    "not a choice": (["--data", "nope"], "argument --data: invalid choice: 'nope'"),
    "value after a flag": (["--mlp", "maybe"], "unrecognized arguments: maybe"),
    "unknown preset": (["--preset", "nope"], "--preset: must be 'default' or an LMConfig"),
    "zero steps": (["--steps", "0"], "--steps: must be >= 1, got 0"),
    "negative batch": (["--batch_size", "-4"], "--batch_size: must be >= 1, got -4"),
    "seq_len 0": (["--seq_len", "0"], "--seq_len: must be >= 2, got 0"),
    "seq_len 1": (["--seq_len", "1"], "--seq_len: must be >= 2, got 1"),
    "negative lr": (["--lr", "-1"], "--lr: must be > 0, got -1.0"),
    "not finite": (["--lr", "nan"], "--lr: must be a finite number, got nan"),
    "ratio out of range": (["--min_lr_ratio", "-1"], "--min_lr_ratio: must be in [0, 1], got -1.0"),
    "beta of 1": (["--beta2", "1"], "--beta2: must be in [0, 1), got 1.0"),
    "negative clip_norm": (["--clip_norm", "-1"], "--clip_norm: must be >= 0, got -1.0"),
    "zero eps": (["--eps", "0"], "--eps: must be > 0, got 0.0"),
    "spike_factor of 1": (["--spike_factor", "1"], "--spike_factor: must be 0 (off) or > 1"),
    "model option": (["--num_heads", "3"], "--num_heads: num_heads=3 must divide hidden_size=64"),
    "mqar sizes": (["--data", "mqar", "--data_path", "none", "--mqar_num_kv_pairs", "9"],
                   "--mqar_num_kv_pairs: 9 key-value pairs need seq_len + 1 >= 36"),
    "resume and overwrite": (["--resume", "--overwrite"], "--resume: no run folder"),
    "missing data_path": (["--data_path", "none"], "--data_path: --data text needs a file"),
    "no such data_path": (["--data_path", "{corpus}.gone"], "--data_path: no such file or folder"),
    "empty folder": (["--data_path", "{empty}"], "--data_path: no text files under"),
    "binary file as text": (["--data_path", "{binary}"], "is not a text file (a NUL byte at"),
    "not UTF-8": (["--data_path", "{latin1}"], "is not a text file (not UTF-8 at byte 3)"),
    "token id out of range": (["--data", "tokens", "--data_path", "{big_ids}"],
                              "--vocab_size: the data has token id 300, outside the model's"),
    "token file size": (["--data", "tokens", "--data_path", "{odd}"],
                        "--token_dtype: '"),
    "data shorter than seq_len": (["--data_path", "{short}", "--seq_len", "200"],
                                  "--seq_len: the train split has 115 tokens, fewer than"),
    "too many devices": (["--num_devices", "999"], "--num_devices: num_devices=999 but"),
    "batch over devices": (["--num_devices", "8", "--batch_size", "12"],
                           "--batch_size: must be divisible by the 8 devices"),
    "launch option alone": (["--num_processes", "2"],
                            "--num_processes: only with --distributed, got --num_processes 2"),
    "coordinator without port": (["--distributed", "--coordinator_address", "host0"],
                                 "--coordinator_address: must be HOST:PORT, got 'host0'"),
    "process id out of range": (["--distributed", "--coordinator_address", "127.0.0.1:9",
                                 "--num_processes", "2", "--process_id", "2"],
                                "--process_id: must be < --num_processes 2, got 2"),
    "launch option not a number": (["--distributed", "--num_processes", "two"],
                                   "argument --num_processes: invalid int value: 'two'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_gets_one_line_and_status_2(tmp_path, rng, capsys, case):
    extra, expected = CASES[case]
    paths = _files(tmp_path, rng)
    run = tmp_path / "run"
    argv = tiny_args(run, paths["corpus"], *[a.format(**paths) for a in extra])
    assert loop.main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train: error: ") and expected in lines[0], lines[0]
    assert not run.exists()  # nothing was created (or deleted)


def test_overwrite_with_resume_is_refused(tmp_path, rng, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert loop.main(tiny_args(run, corpus(tmp_path, rng), "--resume", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err == "train: error: --overwrite: cannot be combined with --resume (one continues " \
                  "the run, the other deletes it)\n"


def test_help_says_how_to_run_it(capsys):
    with pytest.raises(SystemExit) as info:
        loop.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ./run train ") and ".venv/bin/python -m train" in text
    assert "\n  python -m train" not in text  # the examples say ./run train
    assert "--stop_after" not in text and "--nan_at_step" not in text
    assert "--spike_factor" in text and "Exit status" in text
