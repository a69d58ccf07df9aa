// interop::EventWriter: CRC-32C against its published check values, and the file read back by the
// tensorboard package's record reader (both CRCs checked) and EventAccumulator.
#include <string>

#include "interop/event_writer.h"
#include "tests/interop_testing.h"
#include "tests/testing.h"

TEST_CASE("crc32c: the standard check values") {
  CHECK(interop::crc32c("123456789", 9) == 0xe3069283u);  // the CRC catalogue's check value for CRC-32C
  const std::string zeros(32, '\0'), ones(32, '\xff');
  CHECK(interop::crc32c(zeros.data(), 32) == 0x8a9136aau);  // RFC 3720 B.4
  CHECK(interop::crc32c(ones.data(), 32) == 0x62a8ab43u);
}

TEST_CASE("EventWriter: an unwritable folder is refused naming the file") {
  CHECK_THROWS_WITH(interop::EventWriter("/proc/no_such_dir"), doctest::Contains("TensorBoard event file /proc/no_such_dir/events.out.tfevents."));
}

static const std::vector<std::string> kTbModules = {"tensorboard"};

TEST_CASE("EventWriter: scalars read back by tensorboard's event reader" *
          skip_unless(python_has(kTbModules), "EventWriter: " + python_needs(kTbModules, "make test installs it with pip"))) {
  TempDir dir;
  {
    interop::EventWriter tb(dir / "run");
    for (int step = 0; step < 5; step++) tb.scalar("train/loss", step, 2.5f - 0.5f * step);
    tb.scalar("val/top1", 1, 12.25f);
    tb.scalar("val/top1", 3, 40.75f);
  }
  const PythonRun r = run_python({"tests/interop/read_events.py", dir / "run"});
  MESSAGE(r.output);
  REQUIRE(r.rc == 0);
  CHECK(r.output.find("records 8 file_version brain.Event:2\n"
                    "train/loss 0 2.5\ntrain/loss 1 2.0\ntrain/loss 2 1.5\ntrain/loss 3 1.0\ntrain/loss 4 0.5\n"
                    "val/top1 1 12.25\nval/top1 3 40.75\n") != std::string::npos);
}
