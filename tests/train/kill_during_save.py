"""`python tests/train/kill_during_save.py POINT STEP ARGS...`: `python -m train ARGS`, killed
with SIGKILL inside the save of checkpoint STEP, at POINT:

* `orbax`: Orbax has written every file of the step into its temporary folder and is about to
  rename it to `checkpoints/<STEP>`;
* `manifest`: the step folder is in place, its checksum manifest not yet written.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orbax.checkpoint._src.path import atomicity  # noqa: E402

from train import checkpoint, loop  # noqa: E402


def die(*args, **kwargs):
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    point, kill_step, *argv = sys.argv[1:]
    save = checkpoint.Checkpointer.save

    def save_then_maybe_die(self, step, state, meta):
        if step == int(kill_step):
            if point == "orbax":
                atomicity.AtomicRenameTemporaryPath.finalize = die
            elif point == "manifest":
                checkpoint.write_manifest = die
            else:
                raise SystemExit(f"unknown kill point {point!r}")
        return save(self, step, state, meta)

    checkpoint.Checkpointer.save = save_then_maybe_die
    return loop.main(argv)


if __name__ == "__main__":
    sys.exit(main())
