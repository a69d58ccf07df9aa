#include "models/layer_bits.h"

#include <fmt/format.h>

#include <cstdio>
#include <stdexcept>

#include <charconv>

#include "engine/safetensors.h"

namespace models {

bool glob_match(const std::string& p, const std::string& s) {
  // the classic two-pointer match, backtracking to the last *
  size_t i = 0, j = 0, star = std::string::npos, mark = 0;
  while (j < s.size()) {
    if (i < p.size() && (p[i] == '?' || p[i] == s[j])) {
      i++, j++;
    } else if (i < p.size() && p[i] == '*') {
      star = i++, mark = j;
    } else if (star != std::string::npos) {
      i = star + 1, j = ++mark;
    } else {
      return false;
    }
  }
  while (i < p.size() && p[i] == '*') i++;
  return i == p.size();
}

std::vector<LayerBits> apply_layer_spec(const std::string& spec, const std::vector<std::string>& names,
                                        std::vector<LayerBits> base, int default_act, const std::string& option) {
  auto width = [](const std::string& v) {  // 1..16, else 0
    int b = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), b);
    return ec == std::errc() && end == v.data() + v.size() && b >= 1 && b <= 16 ? b : 0;
  };
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string entry = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? spec.size() + 1 : comma + 1;
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0)
      throw std::runtime_error(fmt::format("option {}: '{}' is not PATTERN=VALUE (e.g. stage1.0=8, stage2.*=fp32)", option, entry));
    const std::string pattern = entry.substr(0, eq), value = entry.substr(eq + 1);
    const size_t slash = value.find('/');
    const int w = value == "fp32" ? 0 : width(value.substr(0, slash));
    const int a = value == "fp32" || slash == std::string::npos ? 0 : width(value.substr(slash + 1));
    if (value != "fp32" && (w == 0 || (slash != std::string::npos && a == 0)))
      throw std::runtime_error(fmt::format("option {}: '{}': the value is fp32, W or W/A, widths 1..16", option, entry));
    bool any = false;
    for (size_t i = 0; i < names.size(); i++)
      if (glob_match(pattern, names[i])) {
        base[i] = w == 0 ? LayerBits{} : LayerBits{w, a > 0 ? a : base[i].act > 0 ? base[i].act : default_act};
        any = true;
      }
    if (!any) {
      std::string all;
      for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
      throw std::runtime_error(fmt::format("option {}: '{}' names no layer (the layers: {})", option, pattern, all));
    }
  }
  return base;
}

std::string layer_widths(const std::vector<LayerBits>& layers) {
  std::string s;
  for (const LayerBits& l : layers) {
    if (!s.empty()) s += ',';
    s += l.weight == 0 ? "fp32" : fmt::format("{}/{}", l.weight, l.act);
  }
  return s;
}

std::vector<LayerBits> parse_layer_widths(const std::string& s, const std::string& where) {
  std::vector<LayerBits> layers;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const std::string w = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? s.size() + 1 : comma + 1;
    LayerBits l;
    char tail = 0;
    if (w != "fp32" && (std::sscanf(w.c_str(), "%d/%d%c", &l.weight, &l.act, &tail) != 2 || l.weight < 1 || l.act < 1 ||
                        l.weight > 16 || l.act > 16))
      throw std::runtime_error(fmt::format("{} holds '{}', expected fp32 or W/A (e.g. 4/8)", where, st::cut(w)));
    layers.push_back(l);
  }
  return layers;
}

}  // namespace models
