// The floors of docs/architecture.md: no file includes from a floor above its own.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// Each floor's height (docs/architecture.md's table); models/ and datasets/ stand side by side.
const std::map<std::string, int> kFloors = {{"engine", 0}, {"layers", 1},  {"models", 2}, {"datasets", 2}, {"deploy", 3},
                                            {"interop", 4}, {"trainer", 5}, {"quant", 6},  {"apps", 7}};

// Why `file` (a path under the root: "quant/ptq.cpp") may not include `header` ("trainer/step.h"), or "".
std::string refusal(const std::string& file, const std::string& header) {
  const std::string from = file.substr(0, file.find('/')), to = header.substr(0, header.find('/'));
  if (from == to || !kFloors.count(to)) return "";  // its own floor, or not ours (tests/, a system header)
  // deploy/ runs without a model: the descriptions (the arch table, the per-layer widths; no layers) and the engine
  if (from == "deploy")
    return to == "engine" || header == "models/arch.h" || header == "models/layer_bits.h"
               ? ""
               : "deploy/ includes only engine/, models/arch.h and models/layer_bits.h";
  return kFloors.at(to) < kFloors.at(from) ? "" : to + "/ is not below " + from + "/";
}

}  // namespace

TEST_CASE("floors: the rule refuses an include from above, or deploy/ reaching for the model") {
  CHECK(refusal("quant/ptq.cpp", "trainer/step.h").empty());
  CHECK(refusal("layers/quantizer.h", "engine/ops.h").empty());
  CHECK(refusal("engine/cpu/conv.cpp", "engine/layout.h").empty());
  CHECK(refusal("deploy/int8_model.h", "models/arch.h").empty());
  CHECK(refusal("deploy/int8_model.h", "models/layer_bits.h").empty());
  CHECK(refusal("trainer/step.h", "quant/ptq.h") == "quant/ is not below trainer/");
  CHECK(refusal("models/repvgg.h", "datasets/loader.h") == "datasets/ is not below models/");
  CHECK(refusal("deploy/cluster_file.cpp", "models/repvgg.h") == "deploy/ includes only engine/, models/arch.h and models/layer_bits.h");
  CHECK(refusal("deploy/cluster_file.cpp", "layers/quantizer.h") == "deploy/ includes only engine/, models/arch.h and models/layer_bits.h");
}

TEST_CASE("floors: every include of the library and the programs goes down a floor or stays on its own") {
  REQUIRE(fs::exists("engine/tensor.h"));  // the suite runs from the repository root
  const std::regex include("^\\s*#\\s*include\\s+\"([^\"]+)\"");
  int files = 0, includes = 0;
  for (const auto& [floor, height] : kFloors)
    for (const auto& e : fs::recursive_directory_iterator(floor)) {
      const std::string path = e.path().generic_string(), ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".h" && ext != ".cpp" && ext != ".cu" && ext != ".cuh")) continue;
      files++;
      std::ifstream in(path);
      std::string line;
      for (int n = 1; std::getline(in, line); n++) {
        std::smatch m;
        if (!std::regex_search(line, m, include)) continue;
        includes++;
        const std::string why = refusal(path, m[1]);
        CHECK_MESSAGE(why.empty(), path << ":" << n << " includes " << m[1] << ": " << why);
      }
    }
  CHECK(files > 100);
  CHECK(includes > 200);
  MESSAGE(files << " files, " << includes << " quoted includes checked");
}
