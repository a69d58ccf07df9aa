// Weight histograms as PNG images (stb_image_write), for ./inspect --hist.
#pragma once
#include <string>
#include <vector>

namespace quant {

// bins over [-max|v|, max|v|] as blue bars on white, bar heights log(1 + count) so that rare outliers show,
// a dotted red line at 0.
// Throws naming the file when it cannot be written.
void write_histogram_png(const std::string& path, const std::vector<float>& values, int bins = 201, int width = 603,
                         int height = 240);

}  // namespace quant
