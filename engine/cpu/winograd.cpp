// Winograd convolution in nChw8c (winograd.h): F(m x m, 3x3) with m = 4 (6x6 tiles) on planes of more than 4
// pixels, m = 2 (4x4 tiles) on smaller ones. Per m x m output tile and 8-channel block (Lavin and Gray, Eq. 8):
//   V = Bᵀ d B   the data transform of the tile's (m+2)² input window d (zero outside the image)
//   U = G g Gᵀ   the kernel transform of each channel pair's 3x3 kernel g, once per call
//   M[ξ] = Σ_c V[ξ][c] U[ξ][c][k]   one GEMM for each of the (m+2)² positions ξ of the transformed tile
//   Y = Aᵀ M A   the inverse transform: the tile's m x m outputs
// The backward-data convolution is the same with U of the flipped, transposed kernels; the weight gradient
// runs the chain rule back through these products: S[ξ] = Σ_tiles V[ξ]ᵀ (A gY Aᵀ)[ξ], then gw = Gᵀ S G.
// Tiles run in blocks whose V and M stay in the core's L2 cache; each OpenMP thread takes whole blocks.
// One AVX register holds one channel block of one pixel, so the transforms run on eight channels at once.
#include "engine/cpu/winograd.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "engine/cpu/frozen.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ENGINE_WINOGRAD 1
#endif

namespace engine::cpu {

bool winograd_available() {
#ifdef ENGINE_WINOGRAD
  return true;
#else
  return false;
#endif
}

bool winograd_fits(const ConvShape& s) {
  return winograd_available() && s.kh == 3 && s.kw == 3 && s.stride == 1 && s.ph == 1 && s.pw == 1 &&
         s.groups == 1 && s.x_block == 8 && s.y_block == 8 && s.c % 8 == 0 && s.o % 8 == 0 && s.oh == s.h &&
         s.ow == s.w;
}

#ifdef ENGINE_WINOGRAD
namespace {

using v8 = __m256;  // one pixel's eight channels of a channel block

// The one-dimensional transforms of F(2, 3), on a column of values (float, or v8 for eight channels):
// Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1], Aᵀ = [1 1 1 0; 0 1 -1 -1]
// (Lavin and Gray, Sec. 4.1); gradient() applies A, kernel_gradient() Gᵀ.
struct F2 {
  static constexpr int m = 2, a = 4;
  template <class T> static void data(const T* d, T* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  template <class T> static void kernel(const T* g, T* u) {
    u[0] = g[0];
    u[1] = 0.5f * (g[0] + g[1] + g[2]);
    u[2] = 0.5f * (g[0] - g[1] + g[2]);
    u[3] = g[2];
  }
  template <class T> static void output(const T* x, T* y) {
    y[0] = x[0] + x[1] + x[2];
    y[1] = x[1] - x[2] - x[3];
  }
  template <class T> static void gradient(const T* g, T* z) {
    z[0] = g[0];
    z[1] = g[0] + g[1];
    z[2] = g[0] - g[1];
    z[3] = -g[1];
  }
  template <class T> static void kernel_gradient(const T* s, T* g) {
    g[0] = s[0] + 0.5f * (s[1] + s[2]);
    g[1] = 0.5f * (s[1] - s[2]);
    g[2] = 0.5f * (s[1] + s[2]) + s[3];
  }
};

// F(4, 3) at the points 0, ±1, ±2 (Lavin and Gray, Sec. 4.2):
// Bᵀ = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
// G = [¼ 0 0; -⅙ -⅙ -⅙; -⅙ ⅙ -⅙; 1/24 1/12 ⅙; 1/24 -1/12 ⅙; 0 0 1],
// Aᵀ = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
struct F4 {
  static constexpr int m = 4, a = 6;
  template <class T> static void data(const T* d, T* r) {
    r[0] = 4.f * d[0] - 5.f * d[2] + d[4];
    r[1] = d[3] + d[4] - 4.f * (d[1] + d[2]);
    r[2] = d[4] - d[3] + 4.f * (d[1] - d[2]);
    r[3] = d[4] - d[2] + 2.f * (d[3] - d[1]);
    r[4] = d[4] - d[2] + 2.f * (d[1] - d[3]);
    r[5] = 4.f * d[1] - 5.f * d[3] + d[5];
  }
  template <class T> static void kernel(const T* g, T* u) {
    u[0] = 0.25f * g[0];
    u[1] = (-1.f / 6) * (g[0] + g[1] + g[2]);
    u[2] = (-1.f / 6) * (g[0] - g[1] + g[2]);
    u[3] = (1.f / 24) * g[0] + (1.f / 12) * g[1] + (1.f / 6) * g[2];
    u[4] = (1.f / 24) * g[0] - (1.f / 12) * g[1] + (1.f / 6) * g[2];
    u[5] = g[2];
  }
  template <class T> static void output(const T* x, T* y) {
    y[0] = x[0] + (x[1] + x[2]) + (x[3] + x[4]);
    y[1] = (x[1] - x[2]) + 2.f * (x[3] - x[4]);
    y[2] = (x[1] + x[2]) + 4.f * (x[3] + x[4]);
    y[3] = (x[1] - x[2]) + 8.f * (x[3] - x[4]) + x[5];
  }
  template <class T> static void gradient(const T* g, T* z) {
    z[0] = g[0];
    z[1] = g[0] + g[1] + g[2] + g[3];
    z[2] = g[0] - g[1] + g[2] - g[3];
    z[3] = g[0] + 2.f * g[1] + 4.f * g[2] + 8.f * g[3];
    z[4] = g[0] - 2.f * g[1] + 4.f * g[2] - 8.f * g[3];
    z[5] = g[3];
  }
  template <class T> static void kernel_gradient(const T* s, T* g) {
    g[0] = 0.25f * s[0] - (1.f / 6) * (s[1] + s[2]) + (1.f / 24) * (s[3] + s[4]);
    g[1] = (1.f / 6) * (s[2] - s[1]) + (1.f / 12) * (s[3] - s[4]);
    g[2] = (1.f / 6) * (s[3] + s[4] - s[1] - s[2]) + s[5];
  }
};

// out [q x q] = T in Tᵀ for in [p x p], row-major, where f(column, result) applies the q x p matrix T to one
// column: first to each column of in, then to each row of the result.
template <int p, int q, class V, class F>
[[gnu::always_inline]] inline void two_sided(F f, const V* in, V* out) {
  V t[q][p], column[p], result[q];
  for (int j = 0; j < p; j++) {
    for (int i = 0; i < p; i++) column[i] = in[i * p + j];
    f(column, result);
    for (int i = 0; i < q; i++) t[i][j] = result[i];
  }
  for (int i = 0; i < q; i++) {
    f(t[i], result);
    for (int j = 0; j < q; j++) out[i * q + j] = result[j];
  }
}

// The row stride of the scratch matrices below: 8 floats past their width, so that rows of 64 or 128
// channels (256 or 512 bytes) do not all fall into the same few sets of the L1 cache (the weight gradient
// ran 1.1x faster for it).
int64_t padded(int64_t width) { return width + 8; }

// Every block of tiles reads all the transformed kernels, [a²][c][k]: up to this size they stay in the L3
// cache. Beyond it (256 -> 256 channels in F(4x4), 512 in either) the blocks stream them from memory and
// ran at 0.5-0.8x oneDNN's direct kernel (ResNet-18's 7x7 layers, capped AMD EPYC).
constexpr int64_t kKernelBytes = 6 << 20;

// The calling thread's scratch buffer for one use, grown to the largest shape so far and then reused: the
// transformed kernels, a block's transformed tiles (V and M, or V and Z), the weight gradient's per-thread sums.
enum class Scratch { kernels, tiles, sums };
float* scratch(Scratch use, int64_t floats) {
  thread_local std::vector<float> buffers[3];
  std::vector<float>& b = buffers[(int)use];
  if (b.size() < (size_t)floats) b.resize(floats);
  return b.data();
}

// A frozen weight's transformed kernels are kept under {kWinogradForm, a, c, flip} (frozen.h).
constexpr int64_t kWinogradForm = 1;

// u [a²][c][padded(k)]: the transformed kernels of w, for the convolution of a c-channel input into k channels.
// Forward: w [k, c, 3, 3]. flip (the backward-data convolution): w [c, k, 3, 3], each kernel rotated by 180°.
template <class W>
void transform_kernels(const float* w, int64_t c, int64_t k, bool flip, float* u) {
  constexpr int a = W::a;
#pragma omp parallel for schedule(static) if (c * k >= 4096)
  for (int64_t ko = 0; ko < k; ko++)
    for (int64_t ci = 0; ci < c; ci++) {
      const float* src = flip ? w + (ci * k + ko) * 9 : w + (ko * c + ci) * 9;
      float g[9], t[a * a];
      for (int i = 0; i < 9; i++) g[i] = flip ? src[8 - i] : src[i];
      two_sided<3, a>([](const float* x, float* y) { W::kernel(x, y); }, g, t);
      for (int xi = 0; xi < a * a; xi++) u[(xi * c + ci) * padded(k) + ko] = t[xi];
    }
}

// m[r][8j + l] (+)= Σ_i a[r·a_row + i·a_step] b[i·b_step + 8j + l] for rows r < R, j < nk, l < 8: an
// R x 8nk block of a GEMM in registers over `depth` steps, added to m (accumulate) or written over it.
template <int R, int nk, bool accumulate>
[[gnu::always_inline]] inline void gemm_block(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t b_step, float* m,
                int64_t m_row, int64_t depth) {
  v8 acc[R][nk];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < nk; j++) acc[r][j] = accumulate ? _mm256_loadu_ps(m + r * m_row + 8 * j) : _mm256_setzero_ps();
  for (int64_t i = 0; i < depth; i++) {
    v8 col[nk];
    for (int j = 0; j < nk; j++) col[j] = _mm256_loadu_ps(b + i * b_step + 8 * j);
    for (int r = 0; r < R; r++) {
      const v8 x = _mm256_broadcast_ss(a + r * a_row + i * a_step);
      for (int j = 0; j < nk; j++) acc[r][j] = _mm256_fmadd_ps(x, col[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < nk; j++) _mm256_storeu_ps(m + r * m_row + 8 * j, acc[r][j]);
}

// m [rows][k] (+)= a [rows][depth] b [depth][k] (row strides a_row, b_row, m_row; a's columns a_step apart),
// rows a multiple of 2, k of 8: 6 x 16 register blocks, then 2-row and 8-column ones at the edges.
template <bool accumulate>
[[gnu::always_inline]] inline void gemm(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t b_row, float* m, int64_t m_row,
          int64_t rows, int64_t k, int64_t depth) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) {
    int64_t k0 = 0;
    for (; k0 + 16 <= k; k0 += 16) gemm_block<6, 2, accumulate>(a + r * a_row, a_row, a_step, b + k0, b_row, m + r * m_row + k0, m_row, depth);
    if (k0 < k) gemm_block<6, 1, accumulate>(a + r * a_row, a_row, a_step, b + k0, b_row, m + r * m_row + k0, m_row, depth);
  }
  for (; r < rows; r += 2) {
    int64_t k0 = 0;
    for (; k0 + 16 <= k; k0 += 16) gemm_block<2, 2, accumulate>(a + r * a_row, a_row, a_step, b + k0, b_row, m + r * m_row + k0, m_row, depth);
    if (k0 < k) gemm_block<2, 1, accumulate>(a + r * a_row, a_row, a_step, b + k0, b_row, m + r * m_row + k0, m_row, depth);
  }
}

// The m x m output tiles of an [n, ·, h, w] plane, taken in blocks of `size` tiles (a multiple of 6, the
// forward GEMM's rows): their transformed tiles, [a²][size][channels], about 256 KB, the core's L2 cache,
// but 48 tiles at least, over which each transformed kernel read from the L3 cache is used (at 6 the 256
// channels of ResNet-18's 14x14 layers ran 2x slower).
template <class W>
struct Tiles {
  int64_t n, h, w, across, down, count, size, blocks;
  Tiles(int64_t n, int64_t h, int64_t w, int64_t channels)
      : n(n), h(h), w(w), across((w + W::m - 1) / W::m), down((h + W::m - 1) / W::m), count(n * across * down),
        size(std::clamp<int64_t>(65536 / (W::a * W::a) / channels / 6 * 6, 48, 96)), blocks((count + size - 1) / size) {}
  // Tile t's image and its top-left output pixel.
  int64_t image(int64_t t) const { return t / (across * down); }
  int64_t row(int64_t t) const { return t / across % down * W::m; }
  int64_t col(int64_t t) const { return t % across * W::m; }
};

// v [a²][tiles.size][padded(c)] = Bᵀ d B of the tiles t0 .. t0 + rows of x [n, c, h, w] (nChw8c), zero from
// t0 + nt.
template <class W>
void data_tiles(const Tiles<W>& tiles, const float* x, int64_t c, int64_t t0, int64_t nt, int64_t rows, float* v) {
  constexpr int a = W::a;
  const int64_t h = tiles.h, w = tiles.w;
  for (int64_t t = 0; t < rows; t++)
    for (int64_t b = 0; b < c / 8; b++) {
      v8 d[a * a], out[a * a];
      const float* plane = x + (tiles.image(t0 + t) * (c / 8) + b) * h * w * 8;
      for (int i = 0; i < a; i++)
        for (int j = 0; j < a; j++) {
          const int64_t row = tiles.row(t0 + t) - 1 + i, col = tiles.col(t0 + t) - 1 + j;
          const bool inside = t < nt && row >= 0 && row < h && col >= 0 && col < w;
          d[i * a + j] = inside ? _mm256_loadu_ps(plane + (row * w + col) * 8) : _mm256_setzero_ps();
        }
      two_sided<a, a>([](const v8* x, v8* y) { W::data(x, y); }, d, out);
      for (int xi = 0; xi < a * a; xi++) _mm256_storeu_ps(v + (xi * tiles.size + t) * padded(c) + b * 8, out[xi]);
    }
}

// max(x, 0) per lane as scalar_math.h's relu: x <= 0 gives +0, NaN stays NaN.
inline v8 relu_lanes(v8 x) { return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LE_OQ), x); }

// y [n, k, h, w] (nChw8c) = x [n, c, h, w] (nChw8c) convolved (3x3, stride 1, padding 1) with the
// transformed kernels u [a²][c][padded(k)], plus bias [k] unless null, then the ReLU where `relu`.
// Each thread takes whole blocks of tiles; with fewer blocks than threads (batch 1 on a small plane) a
// block's output channels are split among threads instead, each transforming the block's tiles itself.
template <class W>
void winograd_conv(int64_t n, int64_t c, int64_t k, int64_t h, int64_t w, const float* x, const float* u,
                   const float* bias, bool relu, float* y) {
  constexpr int a = W::a, m = W::m;
  const Tiles<W> tiles(n, h, w, std::max(c, k));
  const int64_t tb = tiles.size, vc = padded(c), mk = padded(k);
  const int64_t threads = omp_get_max_threads();
  const int64_t parts = std::max<int64_t>(1, std::min(threads / tiles.blocks, k / 16));
  const int64_t part_k = (k / 16 + parts - 1) / parts * 16;  // output channels per part: a multiple of 16
#pragma omp parallel
  {
    float* V = scratch(Scratch::tiles, a * a * tb * (vc + mk));  // [a²][tb][vc]
    float* M = V + a * a * tb * vc;                              // [a²][tb][mk]
#pragma omp for schedule(static)
    for (int64_t item = 0; item < tiles.blocks * parts; item++) {
      const int64_t blk = item / parts, part = item % parts, k0 = std::min(k, part * part_k);
      const int64_t kn = (part == parts - 1 ? k : std::min(k, k0 + part_k)) - k0;
      const int64_t t0 = blk * tb, nt = std::min(tb, tiles.count - t0), rows = (nt + 5) / 6 * 6;
      data_tiles(tiles, x, c, t0, nt, rows, V);
      for (int xi = 0; xi < a * a; xi++)  // M[ξ] = V[ξ] U[ξ], channels k0 .. k0 + kn
        gemm<false>(V + xi * tb * vc, vc, 1, u + xi * c * mk + k0, mk, M + xi * tb * mk + k0, mk, rows, kn, c);
      for (int64_t t = 0; t < nt; t++)
        for (int64_t b = k0 / 8; b < (k0 + kn) / 8; b++) {
          v8 mt[a * a], out[m * m];
          for (int xi = 0; xi < a * a; xi++) mt[xi] = _mm256_loadu_ps(M + (xi * tb + t) * mk + b * 8);
          two_sided<a, m>([](const v8* x, v8* y) { W::output(x, y); }, mt, out);
          const v8 add = bias ? _mm256_loadu_ps(bias + b * 8) : _mm256_setzero_ps();
          float* plane = y + (tiles.image(t0 + t) * (k / 8) + b) * h * w * 8;
          for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
              const int64_t row = tiles.row(t0 + t) + i, col = tiles.col(t0 + t) + j;
              const v8 value = out[i * m + j] + add;
              if (row < h && col < w) _mm256_storeu_ps(plane + (row * w + col) * 8, relu ? relu_lanes(value) : value);
            }
        }
    }
  }
}

// gw [k, c, 3, 3] = Gᵀ (Σ_tiles V[ξ][t][c] Z[ξ][t][k]) G with Z = A gY Aᵀ (the gradient of M = U ⊙ V, since
// y = Aᵀ M A): each thread sums its blocks' tiles into its own S [a²][c][padded(k)], then the threads'
// sums are added and transformed back.
template <class W>
void winograd_weight_gradient(int64_t n, int64_t c, int64_t k, int64_t h, int64_t w, const float* x,
                              const float* gy, float* gw) {
  constexpr int a = W::a, m = W::m;
  const Tiles<W> tiles(n, h, w, std::max(c, k));
  const int64_t tb = tiles.size, vc = padded(c), zk = padded(k), per_thread = a * a * c * zk;
  const int threads = omp_get_max_threads();
  float* S = scratch(Scratch::sums, threads * per_thread);  // [threads][a²][c][zk]
  std::fill(S, S + threads * per_thread, 0.f);
#pragma omp parallel num_threads(threads)
  {
    float* V = scratch(Scratch::tiles, a * a * tb * (vc + zk));  // [a²][tb][vc]
    float* Z = V + a * a * tb * vc;                              // [a²][tb][zk]
    float* mine = S + omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < tiles.blocks; blk++) {
      const int64_t t0 = blk * tb, nt = std::min(tb, tiles.count - t0);
      data_tiles(tiles, x, c, t0, nt, nt, V);
      for (int64_t t = 0; t < nt; t++)
        for (int64_t b = 0; b < k / 8; b++) {
          v8 g[m * m], z[a * a];
          const float* plane = gy + (tiles.image(t0 + t) * (k / 8) + b) * h * w * 8;
          for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) {
              const int64_t row = tiles.row(t0 + t) + i, col = tiles.col(t0 + t) + j;
              g[i * m + j] = row < h && col < w ? _mm256_loadu_ps(plane + (row * w + col) * 8) : _mm256_setzero_ps();
            }
          two_sided<m, a>([](const v8* x, v8* y) { W::gradient(x, y); }, g, z);
          for (int xi = 0; xi < a * a; xi++) _mm256_storeu_ps(Z + (xi * tb + t) * zk + b * 8, z[xi]);
        }
      for (int xi = 0; xi < a * a; xi++)  // S[ξ] += V[ξ]ᵀ Z[ξ]
        gemm<true>(V + xi * tb * vc, 1, vc, Z + xi * tb * zk, zk, mine + xi * c * zk, zk, c, k, nt);
    }
#pragma omp for schedule(static)
    for (int64_t ko = 0; ko < k; ko++)
      for (int64_t ci = 0; ci < c; ci++) {
        float s[a * a], g[9];
        for (int xi = 0; xi < a * a; xi++) {
          s[xi] = 0.f;
          for (int th = 0; th < threads; th++) s[xi] += S[th * per_thread + (xi * c + ci) * zk + ko];
        }
        two_sided<a, 3>([](const float* x, float* y) { W::kernel_gradient(x, y); }, s, g);
        std::copy(g, g + 9, gw + (ko * c + ci) * 9);
      }
  }
}

// gb [k] = gy [n, k, h, w] (nChw8c) summed over n, h and w.
void bias_gradient(int64_t n, int64_t k, int64_t hw, const float* gy, float* gb) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < k / 8; b++) {
    v8 sum = _mm256_setzero_ps();
    for (int64_t img = 0; img < n; img++) {
      const float* plane = gy + (img * (k / 8) + b) * hw * 8;
      for (int64_t p = 0; p < hw; p++) sum += _mm256_loadu_ps(plane + p * 8);
    }
    _mm256_storeu_ps(gb + b * 8, sum);
  }
}

// y = x ⋆ kernels (c input channels, k output channels, flip as transform_kernels) with F(m x m, 3x3).
// With frozen_w (w's storage, frozen) the transformed kernels are made once and kept there (frozen.h).
template <class W>
void convolve(const ConvShape& s, int64_t c, int64_t k, const float* x, const float* w, bool flip,
              const float* bias, bool relu, float* y, Storage* frozen_w) {
  const int64_t floats = W::a * W::a * c * padded(k);
  float* u;
  if (frozen_w) {
    const FormKey key{{kWinogradForm, W::a, c, flip}, {}};
    u = (float*)derived_form(*frozen_w, key, floats * sizeof(float),
                             [&](void* buffer) { transform_kernels<W>(w, c, k, flip, (float*)buffer); });
  } else {
    u = scratch(Scratch::kernels, floats);
    transform_kernels<W>(w, c, k, flip, u);
  }
  winograd_conv<W>(s.n, c, k, s.h, s.w, x, u, bias, relu, y);
}

}  // namespace

WinogradTile winograd_tile(const ConvShape& s) {
  auto kernels_fit = [&](int a) { return a * a * s.c * padded(s.o) * 4 <= kKernelBytes; };
  if (std::min(s.h, s.w) > 4 && kernels_fit(F4::a)) return WinogradTile::f4;
  if (kernels_fit(F2::a)) return WinogradTile::f2;
  return WinogradTile::none;
}

// f(F4{}) or f(F2{}): the tile as a type.
template <class F>
void with_tile(WinogradTile tile, F f) {
  ENGINE_CHECK(tile != WinogradTile::none, "Winograd: no tile for this convolution (winograd_tile says none)");
  if (tile == WinogradTile::f4) f(F4{});
  else f(F2{});
}

void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, WinogradTile tile,
                      Storage* frozen_w, bool relu) {
  with_tile(tile, [&](auto t) { convolve<decltype(t)>(s, s.c, s.o, x, w, false, s.bias ? b : nullptr, relu, y, frozen_w); });
}

void winograd_backward_data(const ConvShape& s, const float* gy, const float* w, float* gx, WinogradTile tile) {
  with_tile(tile, [&](auto t) { convolve<decltype(t)>(s, s.o, s.c, gy, w, true, nullptr, false, gx, nullptr); });
}

void winograd_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw, float* gb,
                              WinogradTile tile) {
  with_tile(tile, [&](auto t) { winograd_weight_gradient<decltype(t)>(s.n, s.c, s.o, s.h, s.w, x, gy, gw); });
  if (s.bias) bias_gradient(s.n, s.o, s.h * s.w, gy, gb);
}

#else  // no AVX2 and FMA in this build: winograd_fits is false and these are never called

WinogradTile winograd_tile(const ConvShape&) { return WinogradTile::none; }
void winograd_forward(const ConvShape&, const float*, const float*, const float*, float*, WinogradTile, Storage*, bool) {
  ENGINE_CHECK(false, "winograd_forward: this build has no AVX2 and FMA");
}
void winograd_backward_data(const ConvShape&, const float*, const float*, float*, WinogradTile) {
  ENGINE_CHECK(false, "winograd_backward_data: this build has no AVX2 and FMA");
}
void winograd_backward_weight(const ConvShape&, const float*, const float*, float*, float*, WinogradTile) {
  ENGINE_CHECK(false, "winograd_backward_weight: this build has no AVX2 and FMA");
}

#endif

}  // namespace engine::cpu
