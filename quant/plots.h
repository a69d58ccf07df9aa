// PNG plots (stb_image_write): ./inspect --hist's weight histograms, ./ptq --sensitivity's bar charts.
#pragma once
#include <string>
#include <vector>

namespace quant {

// bins over [-max|v|, max|v|] as blue bars on white, bar heights log(1 + count) so that rare outliers show,
// a dotted red line at 0.
// Throws naming the file when it cannot be written.
void write_histogram_png(const std::string& path, const std::vector<float>& values, int bins = 201, int width = 603,
                         int height = 240);

// Bar charts stacked in panels, one bar per value, heights on a log scale over all panels' positive values
// (a value ≤ 0 draws no bar); a marked bar orange, the others blue; a grey line under each panel.
struct Bar {
  double value;
  bool marked;
};
void write_bars_png(const std::string& path, const std::vector<std::vector<Bar>>& panels, int bar_width = 12,
                    int panel_height = 160);

}  // namespace quant
