"""Runs the recipe's ``main`` and stops dead at a chosen checkpoint, so a test can SIGKILL it there.

``python kill_worker.py MODE N -- RECIPE FLAGS...`` with MODE
* ``after``: once checkpoint number N (counting saves) is completely written, print ``PAUSED`` and sleep;
* ``during``: while checkpoint number N is being written (everything but its completion marker
  is on disk), print ``PAUSED`` and sleep.
The test kills the process with SIGKILL while it sleeps. Nothing here changes what is written.
"""

import sys
import time

import hf_multitask.trainer as trainer_module
import hf_multitask.trainer_checkpoints as checkpoints_module
from hf_multitask.recipe import main

mode, target = sys.argv[1], int(sys.argv[2])
flags = sys.argv[sys.argv.index("--") + 1 :]
saves = {"n": 0}


def pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(600)


if mode == "after":
    original_save = trainer_module.MultitaskTrainer._save_checkpoint

    def save_then_pause(self, model, trial):
        original_save(self, model, trial)
        saves["n"] += 1
        if saves["n"] == target:
            pause()

    trainer_module.MultitaskTrainer._save_checkpoint = save_then_pause
elif mode == "during":
    original_marker = checkpoints_module.write_marker

    def pause_before_marker(folder, step):
        saves["n"] += 1
        if saves["n"] == target:
            pause()
        original_marker(folder, step)

    checkpoints_module.write_marker = pause_before_marker
else:
    raise SystemExit(f"unknown mode {mode!r}")

main(flags)
