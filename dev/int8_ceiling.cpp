// The integer counterpart of `make bench`'s FP32 ceiling: how fast oneDNN's u8 x s8 convolution runs on
// this CPU, so that the int8 inference rows can be read as a fraction of it (docs/performance.md). The
// ceiling's shape ([32, 256, 56, 56] -> 256 channels, 3x3, pad 1) and the CIFAR net's 64-channel 16x16 layer
// at batch 128; u8 src and dst, s8 weights, s32 sums, one output scale, layouts oneDNN picks; beside each the
// FP32 direct convolution of the same shape. GOP/s counts a multiply and an add as two, as GFLOP/s does.
//   make dev && OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive build/dev/int8_ceiling
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "dev/timing.h"

using namespace dnnl;

int main() {
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  struct Shape {
    int64_t n, c, hw, o;
  };
  std::printf("shape                     int8 GOP/s  (impl)                     fp32 GFLOP/s  (impl)\n");
  for (Shape k : {Shape{32, 256, 56, 256}, Shape{128, 64, 16, 64}}) {
    const double ops = 2.0 * k.n * k.hw * k.hw * k.o * k.c * 9;
    double rate[2];
    std::string impl[2];
    for (int int8 = 1; int8 >= 0; int8--) {
      auto md = [&](memory::dims d, memory::data_type t) { return memory::desc(d, t, memory::format_tag::any); };
      const auto act = int8 ? memory::data_type::u8 : memory::data_type::f32;
      const auto wt = int8 ? memory::data_type::s8 : memory::data_type::f32;
      convolution_forward::desc desc(prop_kind::forward_inference, algorithm::convolution_direct,
                                     md({k.n, k.c, k.hw, k.hw}, act), md({k.o, k.c, 3, 3}, wt),
                                     md({k.n, k.o, k.hw, k.hw}, act), {1, 1}, {1, 1}, {1, 1});
      primitive_attr attr;
      if (int8) attr.set_output_scales(0, {0.01f});
      convolution_forward::primitive_desc pd(desc, attr, eng);
      memory src(pd.src_desc(), eng), wei(pd.weights_desc(), eng), dst(pd.dst_desc(), eng);
      for (memory* m : {&src, &wei}) {  // codes 1, or 0.5 (normal floats: denormals would be slow)
        const size_t bytes = m->get_desc().get_size();
        if (int8) std::memset(m->get_data_handle(), 1, bytes);
        else std::fill_n((float*)m->get_data_handle(), bytes / 4, 0.5f);
      }
      convolution_forward conv(pd);
      rate[int8] = ops / 1e9 / time_median([&] {
        conv.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
        s.wait();
      });
      impl[int8] = pd.impl_info_str();
    }
    std::printf("n%-4ld c%-4ld %3ldx%-3ld o%-4ld  %8.1f  (%-24s)  %8.1f  (%s)\n", (long)k.n, (long)k.c, (long)k.hw,
                (long)k.hw, (long)k.o, rate[1], impl[1].c_str(), rate[0], impl[0].c_str());
  }
}
