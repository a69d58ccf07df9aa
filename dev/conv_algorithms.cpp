// Experiment behind engine/cpu/conv.cpp's choice of Winograd: for RepVGG's 3x3 stride-1 shapes, times
// oneDNN's direct and Winograd (F(4x4, 3x3)) primitives (forward, backward-data, backward-weights) in the
// blocked layout, and prints how far Winograd's results are from the direct ones. `make dev` builds it:
//   make dev && OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive build/dev/conv_algorithms
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dev/timing.h"

using namespace dnnl;
using tag = memory::format_tag;

struct Shape {
  int n, c, hw, o;
};

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  // repvgg-a0 at batch 32 (stages 1-3), repvgg-cifar at batch 128 (stages 1-3)
  for (Shape k : {Shape{32, 48, 56, 48}, Shape{32, 96, 28, 96}, Shape{32, 192, 14, 192}, Shape{128, 64, 16, 64},
                  Shape{128, 64, 8, 64}, Shape{128, 64, 4, 64}}) {
    const memory::data_type f32 = memory::data_type::f32;
    memory::desc x({k.n, k.c, k.hw, k.hw}, f32, tag::nChw16c), y({k.n, k.o, k.hw, k.hw}, f32, tag::nChw16c);
    memory::desc xp({k.n, k.c, k.hw, k.hw}, f32, tag::nchw), yp({k.n, k.o, k.hw, k.hw}, f32, tag::nchw);
    memory::desc wp({k.o, k.c, 3, 3}, f32, tag::oihw), wany({k.o, k.c, 3, 3}, f32, tag::any);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> hx(k.n * k.c * k.hw * k.hw), hw(k.o * k.c * 9), hgy(k.n * k.o * k.hw * k.hw);
    for (float& v : hx) v = normal(rng);
    for (float& v : hw) v = 0.05f * normal(rng);
    for (float& v : hgy) v = normal(rng);
    std::printf("n %d, c %d, %dx%d, o %d:\n", k.n, k.c, k.hw, k.hw, k.o);
    std::vector<float> out[2][3];  // [direct, winograd][y, gx, gw], plain layouts
    for (int a = 0; a < 2; a++) {
      const algorithm alg = a ? algorithm::convolution_winograd : algorithm::convolution_direct;
      convolution_forward::primitive_desc fpd(
          convolution_forward::desc(prop_kind::forward_training, alg, x, wany, y, {1, 1}, {1, 1}, {1, 1}), eng);
      convolution_backward_data::primitive_desc bpd(
          convolution_backward_data::desc(alg, x, wany, y, {1, 1}, {1, 1}, {1, 1}), eng, fpd);
      convolution_backward_weights::primitive_desc wpd(
          convolution_backward_weights::desc(alg, x, wany, y, {1, 1}, {1, 1}, {1, 1}), eng, fpd);
      memory mx(x, eng), my(y, eng), mgy(y, eng), mgx(x, eng), mw(fpd.weights_desc(), eng),
          mwb(bpd.weights_desc(), eng), mgw(wpd.diff_weights_desc(), eng);
      memory ux(xp, eng, hx.data()), ugy(yp, eng, hgy.data()), uw(wp, eng, hw.data());
      reorder(ux, mx).execute(s, ux, mx);
      reorder(ugy, mgy).execute(s, ugy, mgy);
      reorder(uw, mw).execute(s, uw, mw);
      reorder(uw, mwb).execute(s, uw, mwb);
      convolution_forward f(fpd);
      convolution_backward_data b(bpd);
      convolution_backward_weights w(wpd);
      const double tf = time_median([&] {
        f.execute(s, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}});
        s.wait();
      });
      const double tb = time_median([&] {
        b.execute(s, {{DNNL_ARG_DIFF_DST, mgy}, {DNNL_ARG_WEIGHTS, mwb}, {DNNL_ARG_DIFF_SRC, mgx}});
        s.wait();
      });
      const double tw = time_median([&] {
        w.execute(s, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mgy}, {DNNL_ARG_DIFF_WEIGHTS, mgw}});
        s.wait();
      });
      const double flop = 2.0 * k.n * k.c * k.o * k.hw * k.hw * 9;
      std::printf("  %-8s forward %6.2f ms (%3.0f GFLOP/s)  backward-data %6.2f ms  backward-weights %6.2f ms  [%s]\n",
                  a ? "winograd" : "direct", tf * 1e3, flop / tf / 1e9, tb * 1e3, tw * 1e3, fpd.impl_info_str());
      out[a][0].resize(hgy.size());
      out[a][1].resize(hx.size());
      out[a][2].resize(hw.size());
      memory py(yp, eng, out[a][0].data()), pgx(xp, eng, out[a][1].data()), pgw(wp, eng, out[a][2].data());
      reorder(my, py).execute(s, my, py);
      reorder(mgx, pgx).execute(s, mgx, pgx);
      reorder(mgw, pgw).execute(s, mgw, pgw);
      s.wait();
    }
    const char* names[3] = {"y", "gx", "gw"};
    for (int t = 0; t < 3; t++) {
      double max_err = 0, max_val = 0, sq_err = 0, sq_val = 0;
      for (size_t i = 0; i < out[0][t].size(); i++) {
        const double d = out[0][t][i], e = std::fabs(out[1][t][i] - d);
        max_err = std::max(max_err, e);
        max_val = std::max(max_val, std::fabs(d));
        sq_err += e * e;
        sq_val += d * d;
      }
      std::printf("  %-2s: winograd - direct: max %.1e (of values up to %.1e), rms relative %.1e\n", names[t], max_err,
                  max_val, std::sqrt(sq_err / sq_val));
    }
  }
}
