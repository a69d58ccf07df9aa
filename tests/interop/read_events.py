"""Reads a TensorBoard event file written by interop::EventWriter (run by tests/test_event_writer.cpp).

    /usr/bin/python3 tests/interop/read_events.py DIR

With tensorboard's own readers: its record reader (which checks both CRCs of every record), then its
EventAccumulator. Prints the file version and, per tag, `tag step value` lines.
"""
import glob
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow


def main(log_dir):
    (path,) = glob.glob(f"{log_dir}/events.out.tfevents.*")
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    records = []
    while True:
        try:
            reader.GetNext()  # raises DataLossError on a bad CRC
        except Exception as e:
            if type(e).__name__ != "OutOfRangeError":
                raise
            break
        records.append(event_pb2.Event.FromString(reader.record()))
    print(f"records {len(records)} file_version {records[0].file_version}")
    acc = event_accumulator.EventAccumulator(log_dir)
    acc.Reload()
    for tag in sorted(acc.Tags()["scalars"]):
        for e in acc.Scalars(tag):
            print(tag, e.step, repr(e.value))


if __name__ == "__main__":
    main(sys.argv[1])
