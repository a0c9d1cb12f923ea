"""Orbax checkpoints of the train state plus a JSON record (step, data position, config), each
sealed by a checksum manifest.

The state pytree is saved as a flat dict `{"params.blocks.0.mixer.q_proj.kernel": array, ...}`
(names from the pytree paths), which any Orbax reader can list, and restored into the structure
and shardings of an abstract state, so a restore lands directly on the mesh.

Integrity. Saves are synchronous. Orbax writes a step to a temporary folder and renames it to
`checkpoints/<step>`; then `MANIFEST` is written into that folder, last and atomically: the size
and sha256 of every file of the step, each file flushed to disk before it is hashed. A checkpoint
is reported saved only after its manifest is on disk, so a step folder without a manifest is a
save that did not finish. Before a restore the step's files are checked against its manifest; a
resume takes the newest intact step, moves newer damaged ones to `<run_dir>/damaged_checkpoints/`
with one line each, and stops with `CheckpointError` when no step is intact.

Several processes (a shared run folder): every process writes its shards of a step; process 0
writes the manifest, and a save returns on every process only once it is there. Before a resume,
process 0 alone checks the steps and moves damaged ones aside while the others wait for the step
it chose.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from train.distributed import broadcast_from_main, is_main_process, sync

MANIFEST = "checksums.json"
MANIFEST_FORMAT = 1

# `resume_step`'s verdicts besides a step number, as process 0 broadcasts them.
_NO_CHECKPOINT, _NONE_INTACT = -1, -2


class CheckpointError(Exception):
    """A checkpoint that cannot be used: `str(error)` is one line naming the step and why."""


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree) -> tuple[dict, object]:
    """`({dotted path: leaf}, treedef)`."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {}
    for path, leaf in leaves:
        name = ".".join(_key_name(k) for k in path if _key_name(k) != "value")
        if name in flat:
            raise ValueError(f"two leaves of the train state map to the name {name!r}")
        flat[name] = leaf
    return flat, treedef


def unflatten(flat: dict, treedef, like) -> object:
    names = list(flatten(like)[0])
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


# --------------------------------------------------------------------------------------------
# The manifest of one step folder.


def _step_files(step_dir: Path) -> list[str]:
    """The relative paths of every file of a step folder but the manifest, sorted."""
    return sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path, *, sync: bool = False) -> str:
    with path.open("rb") as f:
        if sync:
            os.fsync(f.fileno())
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(step_dir: Path):
    """Flush every file of `step_dir` to disk, then write their sizes and hashes atomically."""
    files = {rel: {"bytes": (step_dir / rel).stat().st_size,
                   "sha256": _sha256(step_dir / rel, sync=True)}
             for rel in _step_files(step_dir)}
    tmp = step_dir / (MANIFEST + ".tmp")
    with tmp.open("w") as f:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)
    _fsync_dir(step_dir)


def check_manifest(step_dir: Path) -> str | None:
    """None when the files of `step_dir` are exactly those of its manifest, byte for byte; else
    what is wrong, in a few words."""
    path = step_dir / MANIFEST
    if not path.exists():
        return f"no {MANIFEST}: the save did not finish"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        expected = {rel: (int(f["bytes"]), str(f["sha256"])) for rel, f in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return f"{MANIFEST} is not a valid manifest"
    present = _step_files(step_dir)
    missing = sorted(set(expected) - set(present))
    if missing:
        return f"{missing[0]} is missing"
    extra = sorted(set(present) - set(expected))
    if extra:
        return f"{extra[0]} is not in {MANIFEST}"
    for rel, (size, _) in expected.items():  # sizes first: cheap, and catch truncation
        got = (step_dir / rel).stat().st_size
        if got != size:
            return f"{rel} has {got:,} bytes, {MANIFEST} says {size:,}"
    for rel, (_, digest) in expected.items():
        if _sha256(step_dir / rel) != digest:
            return f"{rel} does not match its sha256 in {MANIFEST}"
    return None


# --------------------------------------------------------------------------------------------
# The checkpoints of a run.


class Checkpointer:
    """Save / check / restore train states under `<run_dir>/checkpoints/<step>`, keeping the
    newest `keep`."""

    def __init__(self, run_dir: Path, keep: int = 2):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / "checkpoints"
        # Orbax removes the temporary folders of interrupted saves when it opens the folder.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Every step folder, intact or not, in increasing order."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state, meta: dict) -> Path:
        """Save `state` and the JSON record `meta` as `step`; complete on disk, manifest
        included, when it returns (on every process)."""
        flat, _ = flatten(state)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                                        meta=ocp.args.JsonSave(meta)),
                          force=True)
        self.manager.wait_until_finished()
        if is_main_process():  # one writer; every process's files are in the folder
            write_manifest(self.step_dir(step))
        sync(f"checkpoint {step} sealed")
        return self.step_dir(step)

    def check(self, step: int) -> str | None:
        """None when `step` is intact, else what is wrong with it."""
        return check_manifest(self.step_dir(step))

    def resume_step(self, report: Callable[[str], object] = print) -> int | None:
        """The step to resume from: the newest intact one (None when there is no checkpoint).

        Damaged steps newer than it are moved to `<run_dir>/damaged_checkpoints/` (a resumed run
        saves those steps again), each reported in one line. Raises `CheckpointError` when no
        step is intact, moving nothing. Process 0 decides; the others wait for its verdict."""
        verdict, error = _NO_CHECKPOINT, None
        if is_main_process():
            try:
                step = self._newest_intact(report)
                verdict = _NO_CHECKPOINT if step is None else step
            except CheckpointError as exc:
                verdict, error = _NONE_INTACT, exc
        verdict = broadcast_from_main(verdict, "resume step")
        self.manager.reload()
        if verdict == _NONE_INTACT:
            raise error or CheckpointError(f"no intact checkpoint in {self.directory} (process "
                                           f"0 lists the damaged steps)")
        return None if verdict == _NO_CHECKPOINT else verdict

    def _newest_intact(self, report: Callable[[str], object]) -> int | None:
        steps = self.all_steps()
        damaged = []
        for step in reversed(steps):
            why = self.check(step)
            if why is None:
                for bad, bad_why in damaged:
                    report(f"checkpoint step {bad} is damaged ({bad_why}): skipped, moved to "
                           f"{self._set_aside(bad)}")
                return step
            damaged.append((step, why))
        if damaged:
            listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise CheckpointError(f"no intact checkpoint in {self.directory} ({listing}); "
                                  f"start the run afresh with --overwrite")
        return None

    def _set_aside(self, step: int) -> Path:
        parent = self.run_dir / "damaged_checkpoints"
        parent.mkdir(exist_ok=True)
        dest, n = parent / str(step), 1
        while dest.exists():
            n += 1
            dest = parent / f"{step}-{n}"
        shutil.move(self.step_dir(step), dest)
        return dest

    def read_meta(self, step: int) -> dict:
        """The JSON record saved with `step` (without reading the state)."""
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(out["meta"])
            int(meta["step"])
            return meta
        except Exception as exc:  # noqa: BLE001 - whatever Orbax raised, in one line
            raise CheckpointError(f"checkpoint step {step}: cannot read its record "
                                  f"({_one_line(exc)})") from None

    def restore(self, step: int, abstract_state) -> object:
        """The state saved at `step`, with the structure, dtypes and shardings of
        `abstract_state` (a pytree of `jax.ShapeDtypeStruct`s)."""
        flat_abstract, treedef = flatten(abstract_state)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(flat_abstract)))
        except Exception as exc:  # noqa: BLE001 - whatever Orbax raised, in one line
            raise CheckpointError(f"checkpoint step {step}: cannot restore the state "
                                  f"({_one_line(exc)})") from None
        return unflatten(dict(out["state"]), treedef, abstract_state)

    def close(self):
        self.manager.close()


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"
