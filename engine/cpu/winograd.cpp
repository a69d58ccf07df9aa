// Winograd F(2x2, 3x3) in nChw8c (winograd.h). Per 2x2 output tile and 8-channel block:
//   V = Bᵀ d B   (Eq. 8's data transform: the tile's 4x4 input window d, zero outside the image)
//   U = G g Gᵀ   (the 3x3 kernel g of each channel pair, transformed once per call)
//   M[ξ] = Σ_c V[ξ][c] U[ξ][c][k]   for each of the 16 positions ξ of the 4x4 transformed tile: 16 GEMMs
//   Y = Aᵀ M A   (the inverse transform: the tile's 2x2 outputs)
// The backward-data convolution is the same with U of the flipped, transposed kernels; the weight gradient
// runs the chain rule back through these products: S[ξ] = Σ_tiles V[ξ]ᵀ (A gY Aᵀ)[ξ], then gw = Gᵀ S G.
// Tiles run in blocks whose V and M stay in the core's L2 cache; each OpenMP thread takes whole blocks.
// One AVX register holds one channel block of one pixel, so the transforms run on eight channels at once.
#include "engine/cpu/winograd.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ENGINE_WINOGRAD 1
#endif

namespace engine::cpu {

bool winograd_fits(const ConvShape& s) {
#ifdef ENGINE_WINOGRAD
  return s.kh == 3 && s.kw == 3 && s.stride == 1 && s.ph == 1 && s.pw == 1 && s.groups == 1 && s.x_block == 8 &&
         s.y_block == 8 && s.c % 8 == 0 && s.o % 8 == 0 && s.oh == s.h && s.ow == s.w;
#else
  return false;
#endif
}

#ifdef ENGINE_WINOGRAD
namespace {

using v8 = __m256;  // one pixel's eight channels of a channel block

// V = Bᵀ d B, Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] (Lavin and Gray, Sec. 4.1, F(2x2, 3x3)).
void data_transform(const v8 d[4][4], v8 v[16]) {
  v8 t[4][4];  // Bᵀ d
  for (int j = 0; j < 4; j++) {
    t[0][j] = d[0][j] - d[2][j];
    t[1][j] = d[1][j] + d[2][j];
    t[2][j] = d[2][j] - d[1][j];
    t[3][j] = d[1][j] - d[3][j];
  }
  for (int i = 0; i < 4; i++) {
    v[i * 4 + 0] = t[i][0] - t[i][2];
    v[i * 4 + 1] = t[i][1] + t[i][2];
    v[i * 4 + 2] = t[i][2] - t[i][1];
    v[i * 4 + 3] = t[i][1] - t[i][3];
  }
}

// U = G g Gᵀ, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1].
void kernel_transform(const float g[3][3], float u[16]) {
  float t[4][3];  // G g
  for (int j = 0; j < 3; j++) {
    t[0][j] = g[0][j];
    t[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
    t[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
    t[3][j] = g[2][j];
  }
  for (int i = 0; i < 4; i++) {
    u[i * 4 + 0] = t[i][0];
    u[i * 4 + 1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
    u[i * 4 + 2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
    u[i * 4 + 3] = t[i][2];
  }
}

// Y = Aᵀ M A, Aᵀ = [1 1 1 0; 0 1 -1 -1].
void output_transform(const v8 m[16], v8 y[2][2]) {
  v8 t[2][4];  // Aᵀ M
  for (int j = 0; j < 4; j++) {
    t[0][j] = m[0 * 4 + j] + m[1 * 4 + j] + m[2 * 4 + j];
    t[1][j] = m[1 * 4 + j] - m[2 * 4 + j] - m[3 * 4 + j];
  }
  for (int i = 0; i < 2; i++) {
    y[i][0] = t[i][0] + t[i][1] + t[i][2];
    y[i][1] = t[i][1] - t[i][2] - t[i][3];
  }
}

// The row stride of the scratch matrices below: 8 floats past their width, so that rows of 64 or 128
// channels (256 or 512 bytes) do not all fall into the same few sets of the L1 cache, which made the
// weight gradient's GEMM twice as slow.
int64_t padded(int64_t width) { return width + 8; }

// u [16][c][padded(k)]: the transformed kernels of w, for the convolution of a c-channel input into k channels.
// Forward: w [k, c, 3, 3]. flip (the backward-data convolution): w [c, k, 3, 3], each kernel rotated by 180°.
void transform_kernels(const float* w, int64_t c, int64_t k, bool flip, float* u) {
#pragma omp parallel for schedule(static) if (c * k >= 4096)
  for (int64_t ko = 0; ko < k; ko++)
    for (int64_t ci = 0; ci < c; ci++) {
      const float* src = flip ? w + (ci * k + ko) * 9 : w + (ko * c + ci) * 9;
      float g[3][3], t[16];
      for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) g[i][j] = flip ? src[(2 - i) * 3 + (2 - j)] : src[i * 3 + j];
      kernel_transform(g, t);
      for (int xi = 0; xi < 16; xi++) u[(xi * c + ci) * padded(k) + ko] = t[xi];
    }
}

// m[r][8j + l] (+)= Σ_i a[r·a_row + i·a_step] b[i·b_step + 8j + l] for rows r < R, j < nk, l < 8: an
// R x 8nk block of a GEMM in registers over `depth` steps, added to m (accumulate) or written over it.
template <int R, int nk, bool accumulate>
void gemm_block(const float* a, int64_t a_row, int64_t a_step, const float* b, int64_t b_step, float* m,
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

// The 2x2 output tiles of an [n, ·, h, w] plane, taken in blocks of `size` tiles (a multiple of 6, the
// forward GEMM's rows) whose transformed tiles, [16][size][channels], stay in the core's L2 cache.
struct Tiles {
  int64_t n, h, w, across, down, count, size, blocks;
  Tiles(int64_t n, int64_t h, int64_t w, int64_t channels)
      : n(n), h(h), w(w), across((w + 1) / 2), down((h + 1) / 2), count(n * across * down),
        size(std::clamp<int64_t>(4096 / channels / 6 * 6, 6, 96)), blocks((count + size - 1) / size) {}
  // Tile t's image and its top-left output pixel.
  int64_t image(int64_t t) const { return t / (across * down); }
  int64_t row(int64_t t) const { return t / across % down * 2; }
  int64_t col(int64_t t) const { return t % across * 2; }
};

// v [16][tiles.size][padded(c)] = Bᵀ d B of the tiles t0 .. t0 + rows of x [n, c, h, w] (nChw8c), zero from t0 + nt.
void data_tiles(const Tiles& tiles, const float* x, int64_t c, int64_t t0, int64_t nt, int64_t rows, float* v) {
  const int64_t h = tiles.h, w = tiles.w;
  for (int64_t t = 0; t < rows; t++)
    for (int64_t b = 0; b < c / 8; b++) {
      v8 d[4][4], out[16];
      const float* plane = x + (tiles.image(t0 + t) * (c / 8) + b) * h * w * 8;
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
          const int64_t row = tiles.row(t0 + t) - 1 + i, col = tiles.col(t0 + t) - 1 + j;
          const bool inside = t < nt && row >= 0 && row < h && col >= 0 && col < w;
          d[i][j] = inside ? _mm256_loadu_ps(plane + (row * w + col) * 8) : _mm256_setzero_ps();
        }
      data_transform(d, out);
      for (int xi = 0; xi < 16; xi++) _mm256_storeu_ps(v + (xi * tiles.size + t) * padded(c) + b * 8, out[xi]);
    }
}

// y [n, k, h, w] (nChw8c) = x [n, c, h, w] (nChw8c) convolved (3x3, stride 1, padding 1) with the
// transformed kernels u [16][c][padded(k)], plus bias [k] unless null.
void winograd_conv(int64_t n, int64_t c, int64_t k, int64_t h, int64_t w, const float* x, const float* u,
                   const float* bias, float* y) {
  const Tiles tiles(n, h, w, std::max(c, k));
  const int64_t tb = tiles.size, vc = padded(c), mk = padded(k);
#pragma omp parallel
  {
    thread_local std::vector<float> scratch;  // grows to the largest shape, then is reused
    if (scratch.size() < (size_t)(16 * tb * (vc + mk))) scratch.resize(16 * tb * (vc + mk));
    float* V = scratch.data();    // [16][tb][vc]
    float* M = V + 16 * tb * vc;  // [16][tb][mk]
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < tiles.blocks; blk++) {
      const int64_t t0 = blk * tb, nt = std::min(tb, tiles.count - t0), rows = (nt + 5) / 6 * 6;
      data_tiles(tiles, x, c, t0, nt, rows, V);
      for (int xi = 0; xi < 16; xi++) {  // M[ξ] = V[ξ] U[ξ]
        const float *vx = V + xi * tb * vc, *ux = u + xi * c * mk;
        float* mx = M + xi * tb * mk;
        for (int64_t r = 0; r < rows; r += 6) {
          int64_t k0 = 0;
          for (; k0 + 16 <= k; k0 += 16) gemm_block<6, 2, false>(vx + r * vc, vc, 1, ux + k0, mk, mx + r * mk + k0, mk, c);
          if (k0 < k) gemm_block<6, 1, false>(vx + r * vc, vc, 1, ux + k0, mk, mx + r * mk + k0, mk, c);
        }
      }
      for (int64_t t = 0; t < nt; t++)
        for (int64_t b = 0; b < k / 8; b++) {
          v8 m[16], out[2][2];
          for (int xi = 0; xi < 16; xi++) m[xi] = _mm256_loadu_ps(M + (xi * tb + t) * mk + b * 8);
          output_transform(m, out);
          const v8 add = bias ? _mm256_loadu_ps(bias + b * 8) : _mm256_setzero_ps();
          float* plane = y + (tiles.image(t0 + t) * (k / 8) + b) * h * w * 8;
          for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
              const int64_t row = tiles.row(t0 + t) + i, col = tiles.col(t0 + t) + j;
              if (row < h && col < w) _mm256_storeu_ps(plane + (row * w + col) * 8, out[i][j] + add);
            }
        }
    }
  }
}

// Z = A g Aᵀ for the 2x2 output gradient g of a tile: the gradient of M = U ⊙ V, since y = Aᵀ M A.
void gradient_transform(const v8 g[2][2], v8 z[16]) {
  v8 t[4][2];  // A g
  for (int j = 0; j < 2; j++) {
    t[0][j] = g[0][j];
    t[1][j] = g[0][j] + g[1][j];
    t[2][j] = g[0][j] - g[1][j];
    t[3][j] = -g[1][j];
  }
  for (int i = 0; i < 4; i++) {
    z[i * 4 + 0] = t[i][0];
    z[i * 4 + 1] = t[i][0] + t[i][1];
    z[i * 4 + 2] = t[i][0] - t[i][1];
    z[i * 4 + 3] = -t[i][1];
  }
}

// g = Gᵀ S G: the 3x3 kernel's gradient from the gradient S of its transform U = G g Gᵀ.
void kernel_gradient(const float s[16], float g[3][3]) {
  float t[3][4];  // Gᵀ S
  for (int j = 0; j < 4; j++) {
    t[0][j] = s[0 * 4 + j] + 0.5f * (s[1 * 4 + j] + s[2 * 4 + j]);
    t[1][j] = 0.5f * (s[1 * 4 + j] - s[2 * 4 + j]);
    t[2][j] = 0.5f * (s[1 * 4 + j] + s[2 * 4 + j]) + s[3 * 4 + j];
  }
  for (int i = 0; i < 3; i++) {
    g[i][0] = t[i][0] + 0.5f * (t[i][1] + t[i][2]);
    g[i][1] = 0.5f * (t[i][1] - t[i][2]);
    g[i][2] = 0.5f * (t[i][1] + t[i][2]) + t[i][3];
  }
}

// gw [k, c, 3, 3] = Gᵀ (Σ_tiles V[ξ][t][c] Z[ξ][t][k]) G: each thread sums its blocks' tiles into its own
// S [16][c][padded(k)], then the threads' sums are added and transformed back.
void winograd_weight_gradient(int64_t n, int64_t c, int64_t k, int64_t h, int64_t w, const float* x,
                              const float* gy, float* gw) {
  const Tiles tiles(n, h, w, std::max(c, k));
  const int64_t tb = tiles.size, vc = padded(c), zk = padded(k), per_thread = 16 * c * zk;
  thread_local std::vector<float> sums;  // [threads][16][c][k]
  const int threads = omp_get_max_threads();
  if (sums.size() < (size_t)(threads * per_thread)) sums.resize(threads * per_thread);
  float* S = sums.data();
  std::fill(S, S + threads * per_thread, 0.f);
#pragma omp parallel num_threads(threads)
  {
    thread_local std::vector<float> scratch;
    if (scratch.size() < (size_t)(16 * tb * (vc + zk))) scratch.resize(16 * tb * (vc + zk));
    float* V = scratch.data();    // [16][tb][vc]
    float* Z = V + 16 * tb * vc;  // [16][tb][zk]
    float* mine = S + omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < tiles.blocks; blk++) {
      const int64_t t0 = blk * tb, nt = std::min(tb, tiles.count - t0);
      data_tiles(tiles, x, c, t0, nt, nt, V);
      for (int64_t t = 0; t < nt; t++)
        for (int64_t b = 0; b < k / 8; b++) {
          v8 g[2][2], z[16];
          const float* plane = gy + (tiles.image(t0 + t) * (k / 8) + b) * h * w * 8;
          for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
              const int64_t row = tiles.row(t0 + t) + i, col = tiles.col(t0 + t) + j;
              g[i][j] = row < h && col < w ? _mm256_loadu_ps(plane + (row * w + col) * 8) : _mm256_setzero_ps();
            }
          gradient_transform(g, z);
          for (int xi = 0; xi < 16; xi++) _mm256_storeu_ps(Z + (xi * tb + t) * zk + b * 8, z[xi]);
        }
      for (int xi = 0; xi < 16; xi++) {  // S[ξ] += V[ξ]ᵀ Z[ξ]
        const float *vx = V + xi * tb * vc, *zx = Z + xi * tb * zk;
        float* sx = mine + xi * c * zk;
        int64_t c0 = 0;
        for (; c0 + 6 <= c; c0 += 6) {
          int64_t k0 = 0;
          for (; k0 + 16 <= k; k0 += 16) gemm_block<6, 2, true>(vx + c0, 1, vc, zx + k0, zk, sx + c0 * zk + k0, zk, nt);
          if (k0 < k) gemm_block<6, 1, true>(vx + c0, 1, vc, zx + k0, zk, sx + c0 * zk + k0, zk, nt);
        }
        for (; c0 < c; c0 += 2) {
          int64_t k0 = 0;
          for (; k0 + 16 <= k; k0 += 16) gemm_block<2, 2, true>(vx + c0, 1, vc, zx + k0, zk, sx + c0 * zk + k0, zk, nt);
          if (k0 < k) gemm_block<2, 1, true>(vx + c0, 1, vc, zx + k0, zk, sx + c0 * zk + k0, zk, nt);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t ko = 0; ko < k; ko++)
      for (int64_t ci = 0; ci < c; ci++) {
        float s[16], g[3][3];
        for (int xi = 0; xi < 16; xi++) {
          s[xi] = 0.f;
          for (int th = 0; th < threads; th++) s[xi] += S[th * per_thread + (xi * c + ci) * zk + ko];
        }
        kernel_gradient(s, g);
        for (int i = 0; i < 3; i++)
          for (int j = 0; j < 3; j++) gw[((ko * c + ci) * 3 + i) * 3 + j] = g[i][j];
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

// The calling thread's buffer for the transformed kernels, grown to the largest shape.
float* kernel_buffer(int64_t size) {
  thread_local std::vector<float> u;
  if (u.size() < (size_t)size) u.resize(size);
  return u.data();
}

}  // namespace

void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) {
  float* u = kernel_buffer(16 * s.c * padded(s.o));
  transform_kernels(w, s.c, s.o, false, u);
  winograd_conv(s.n, s.c, s.o, s.h, s.w, x, u, s.bias ? b : nullptr, y);
}

void winograd_backward_data(const ConvShape& s, const float* gy, const float* w, float* gx) {
  float* u = kernel_buffer(16 * s.o * padded(s.c));
  transform_kernels(w, s.o, s.c, true, u);
  winograd_conv(s.n, s.o, s.c, s.h, s.w, gy, u, nullptr, gx);
}

void winograd_backward_weight(const ConvShape& s, const float* x, const float* gy, float* gw, float* gb) {
  winograd_weight_gradient(s.n, s.c, s.o, s.h, s.w, x, gy, gw);
  if (s.bias) bias_gradient(s.n, s.o, s.h * s.w, gy, gb);
}

#else  // no AVX2 and FMA in this build: winograd_fits is false and these are never called

void winograd_forward(const ConvShape&, const float*, const float*, const float*, float*) {
  ENGINE_CHECK(false, "winograd_forward: this build has no AVX2 and FMA");
}
void winograd_backward_data(const ConvShape&, const float*, const float*, float*) {
  ENGINE_CHECK(false, "winograd_backward_data: this build has no AVX2 and FMA");
}
void winograd_backward_weight(const ConvShape&, const float*, const float*, float*, float*) {
  ENGINE_CHECK(false, "winograd_backward_weight: this build has no AVX2 and FMA");
}

#endif

}  // namespace engine::cpu
