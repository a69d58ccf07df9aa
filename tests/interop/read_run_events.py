"""Reads a ./train run folder's TensorBoard events (run by tests/test_tensorboard_log.cpp).

    /usr/bin/python3 tests/interop/read_run_events.py RUN_DIR

With tensorboard's EventAccumulator, which merges every events file of the folder (one per run or resume).
Prints `files N`, then `tag step value` lines per tag, sorted by tag and step.
"""
import glob
import sys

from tensorboard.backend.event_processing import event_accumulator


def main(run_dir):
    print("files", len(glob.glob(f"{run_dir}/events.out.tfevents.*")))
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})  # keep all
    acc.Reload()
    for tag in sorted(acc.Tags()["scalars"]):
        for e in sorted(acc.Scalars(tag), key=lambda e: e.step):
            print(tag, e.step, repr(e.value))


if __name__ == "__main__":
    main(sys.argv[1])
