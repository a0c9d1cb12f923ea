"""Checkpoint integrity: the checksum manifest catches every kind of damage, and a resume takes
the newest intact step (or stops when there is none)."""

import json

import jax
import numpy as np
import pytest

from train.checkpoint import MANIFEST, Checkpointer, CheckpointError, check_manifest, write_manifest


def _step_folder(path, rng):
    """A folder shaped like a checkpoint step: a few binary files and a JSON file."""
    (path / "state" / "d").mkdir(parents=True)
    for i in range(3):
        (path / "state" / "d" / f"chunk{i}").write_bytes(rng.bytes(int(rng.integers(9000, 20000))))
    (path / "meta").mkdir()
    (path / "meta" / "metadata").write_text(json.dumps({"step": 7, "x": rng.random()}))
    return path


def _largest(path):
    return max((p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST),
               key=lambda p: p.stat().st_size)


def _truncate(path, rng):
    f = _largest(path)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _overwrite_4k(path, rng):
    f = _largest(path)
    data = bytearray(f.read_bytes())
    at = int(rng.integers(0, len(data) - 4096))
    new = rng.bytes(4096)
    assert new != bytes(data[at:at + 4096])
    data[at:at + 4096] = new
    f.write_bytes(bytes(data))


def _flip_one_bit(path, rng):
    f = _largest(path)
    data = bytearray(f.read_bytes())
    data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
    f.write_bytes(bytes(data))


def _break_json(path, rng):
    meta = path / "meta" / "metadata"
    meta.write_text(meta.read_text()[:-3])


def _remove_a_file(path, rng):
    (path / "state" / "d" / "chunk1").unlink()


def _add_a_file(path, rng):
    (path / "state" / "d" / "chunk9").write_bytes(rng.bytes(100))


def _no_manifest(path, rng):
    (path / MANIFEST).unlink()


def _broken_manifest(path, rng):
    (path / MANIFEST).write_text((path / MANIFEST).read_text()[:-10])


@pytest.mark.parametrize("damage,expected", [
    (_truncate, "bytes, checksums.json says"),
    (_overwrite_4k, "does not match its sha256"),
    (_flip_one_bit, "does not match its sha256"),
    (_break_json, "meta/metadata"),
    (_remove_a_file, "state/d/chunk1 is missing"),
    (_add_a_file, "state/d/chunk9 is not in checksums.json"),
    (_no_manifest, "no checksums.json: the save did not finish"),
    (_broken_manifest, "checksums.json is not a valid manifest"),
])
def test_manifest_catches_damage(tmp_path, rng, damage, expected):
    step = _step_folder(tmp_path / "7", rng)
    write_manifest(step)
    assert check_manifest(step) is None
    assert not (step / (MANIFEST + ".tmp")).exists()
    damage(step, rng)
    why = check_manifest(step)
    assert why is not None and expected in why, why
    assert "\n" not in why


def _state(rng):
    return {"step": np.int32(rng.integers(1, 100)),
            "params": {"w": rng.standard_normal((64, 32)).astype(np.float32),
                       "b": rng.standard_normal(32).astype(np.float32)}}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def test_save_check_restore_and_fall_back(tmp_path, rng):
    states = {s: _state(rng) for s in (2, 4, 6)}
    ckpt = Checkpointer(tmp_path, keep=3)
    for s, state in states.items():
        assert ckpt.save(s, state, {"step": s}) == tmp_path.absolute() / "checkpoints" / str(s)
    assert ckpt.all_steps() == [2, 4, 6] and all(ckpt.check(s) is None for s in (2, 4, 6))
    assert ckpt.read_meta(4) == {"step": 4}
    got = ckpt.restore(4, _abstract(states[4]))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(states[4]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert ckpt.check(4) is None  # restoring reads, it does not touch the files

    # The two newest are damaged: each is reported in one line and moved aside.
    _truncate(ckpt.step_dir(6), rng)
    _overwrite_4k(ckpt.step_dir(4), rng)
    lines = []
    assert ckpt.resume_step(report=lines.append) == 2
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith("checkpoint step 6 is damaged (") and "bytes" in lines[0]
    assert lines[1].startswith("checkpoint step 4 is damaged (") and "sha256" in lines[1]
    assert ckpt.all_steps() == [2]
    assert sorted(p.name for p in (tmp_path / "damaged_checkpoints").iterdir()) == ["4", "6"]
    # The steps are saved again after the resume; a second damage of 4 keeps the first copy.
    ckpt.save(4, states[4], {"step": 4})
    _flip_one_bit(ckpt.step_dir(4), rng)
    assert ckpt.resume_step(report=lines.append) == 2
    assert (tmp_path / "damaged_checkpoints" / "4-2").is_dir()
    ckpt.close()


def test_no_intact_checkpoint_stops_and_moves_nothing(tmp_path, rng):
    ckpt = Checkpointer(tmp_path, keep=2)
    for s in (3, 6):
        ckpt.save(s, _state(rng), {"step": s})
    _truncate(ckpt.step_dir(6), rng)
    _break_json(ckpt.step_dir(3), rng)
    with pytest.raises(CheckpointError, match="no intact checkpoint") as info:
        ckpt.resume_step(report=lambda line: pytest.fail(f"reported {line!r}"))
    assert "step 6: " in str(info.value) and "step 3: " in str(info.value)
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)
    assert ckpt.all_steps() == [3, 6] and not (tmp_path / "damaged_checkpoints").exists()
    ckpt.close()


def test_no_checkpoint_at_all_is_not_an_error(tmp_path):
    ckpt = Checkpointer(tmp_path)
    assert ckpt.resume_step() is None
    ckpt.close()
