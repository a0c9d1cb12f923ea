"""Orbax checkpoints of the train state plus a JSON record (step, data position, config).

The state pytree is saved as a flat dict `{"params.blocks.0.mixer.q_proj.kernel": array, ...}`
(names from the pytree paths), which any Orbax reader can list, and restored into the structure
and shardings of an abstract state, so a restore lands directly on the mesh. Saves are
synchronous: a checkpoint reported saved is complete on disk (Orbax writes to a temporary folder
and renames it, so an interrupted save never shows up as a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


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


class Checkpointer:
    """Save / restore train states under `<run_dir>/checkpoints/<step>`, keeping the newest
    `keep`."""

    def __init__(self, run_dir: Path, keep: int = 2):
        self.directory = (Path(run_dir) / "checkpoints").absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> Path:
        flat, _ = flatten(state)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                                        meta=ocp.args.JsonSave(meta)),
                          force=True)
        self.manager.wait_until_finished()
        return self.directory / str(step)

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """The state saved at `step`, with the structure, dtypes and shardings of
        `abstract_state` (a pytree of `jax.ShapeDtypeStruct`s), and its JSON record."""
        flat_abstract, treedef = flatten(abstract_state)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(flat_abstract), meta=ocp.args.JsonRestore()))
        return unflatten(dict(out["state"]), treedef, abstract_state), dict(out["meta"])

    def close(self):
        self.manager.close()
