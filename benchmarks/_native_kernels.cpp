// Native CPU kernels for benchmarks/native_kernels_probe.py: what fused, compiled kernels would
// save in the DLRM benchmark step. A measurement probe, not part of the recstack package (which
// has no compiled code): dim 16, batch a multiple of 16, AVX-512 only.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

// W[idx[i]] += alpha * g[i], rows in index order (exact as scatter_add_ of pre-scaled rows).
// Two-way split by row range so that a row's updates stay in order on one thread.
void sparse_sgd_rows(torch::Tensor W, torch::Tensor idx, torch::Tensor g, double alpha) {
  TORCH_CHECK(W.is_contiguous() && g.is_contiguous() && idx.is_contiguous() && idx.scalar_type() == at::kLong);
  const int64_t D = W.size(1), N = idx.numel(), R = W.size(0);
  TORCH_CHECK(D == 16 && W.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat && g.size(0) == N);
  float* w = W.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float a = (float)alpha;
  int nt = at::get_num_threads();
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t lo = R * t / nt, hi = R * (t + 1) / nt;
      const __m512 va = _mm512_set1_ps(a);
      for (int64_t i = 0; i < N; ++i) {
        if (i + 16 < N) {
          int64_t rp = ip[i + 16];
          if (rp >= lo && rp < hi) _mm_prefetch((const char*)(w + rp * 16), _MM_HINT_T0);
        }
        const int64_t r = ip[i];
        if (r < lo || r >= hi) continue;
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(gp + i * 16), va);
        _mm512_storeu_ps(w + r * 16, _mm512_add_ps(_mm512_loadu_ps(w + r * 16), s));
      }
    }
  });
}

// Dot interaction forward. xT: [16, B] (feature-major dense), tiled: [T*B, 16] (pooled
// embeddings, table-major). Returns zT [16 + P, B]: rows 0..15 = xT, then the strict lower
// triangle of each sample's Gram matrix of [x, e_1..e_T] (row-major pair order).
torch::Tensor dot_fwd(torch::Tensor xT, torch::Tensor tiled) {
  const int64_t B = xT.size(1), T = tiled.size(0) / B, F = T + 1, P = F * (F - 1) / 2;
  TORCH_CHECK(xT.size(0) == 16 && xT.stride(1) == 1 && tiled.is_contiguous() && tiled.size(1) == 16);
  TORCH_CHECK(B % 16 == 0 && F <= 16 && xT.scalar_type() == at::kFloat && tiled.scalar_type() == at::kFloat);
  auto z = torch::empty({16 + P, B}, xT.options());
  float* zp = z.data_ptr<float>();
  const float* xp = xT.data_ptr<float>();
  const int64_t xs = xT.stride(0);
  const float* tp = tiled.data_ptr<float>();
  at::parallel_for(0, B / 16, 8, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[16][16][16];  // [feature][dim][sample]; up to 15 tables
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t b = blk * 16;
      for (int k = 0; k < 16; ++k) {
        __m512 v = _mm512_loadu_ps(xp + k * xs + b);
        _mm512_store_ps(buf[0][k], v);
        _mm512_storeu_ps(zp + k * B + b, v);
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* src = tp + (t * B + b) * 16;  // 16 samples x 16 dims, row-major
        for (int s = 0; s < 16; ++s)
          for (int k = 0; k < 16; ++k) buf[t + 1][k][s] = src[s * 16 + k];
      }
      int64_t p = 0;
      for (int64_t i = 1; i < F; ++i)
        for (int64_t j = 0; j < i; ++j, ++p) {
          __m512 acc = _mm512_mul_ps(_mm512_load_ps(buf[i][0]), _mm512_load_ps(buf[j][0]));
          for (int k = 1; k < 16; ++k)
            acc = _mm512_fmadd_ps(_mm512_load_ps(buf[i][k]), _mm512_load_ps(buf[j][k]), acc);
          _mm512_storeu_ps(zp + (16 + p) * B + b, acc);
        }
    }
  });
  return z;
}

// Backward: gT [16 + P, B] feature-major gradient of zT. Returns (gxT [16, B], gtiled [T*B, 16]).
std::vector<torch::Tensor> dot_bwd(torch::Tensor gT, torch::Tensor xT, torch::Tensor tiled) {
  const int64_t B = xT.size(1), T = tiled.size(0) / B, F = T + 1;
  TORCH_CHECK(gT.stride(1) == 1 && xT.stride(1) == 1 && tiled.is_contiguous() && tiled.size(1) == 16);
  TORCH_CHECK(B % 16 == 0 && F <= 16 && gT.size(0) == 16 + F * (F - 1) / 2 && gT.scalar_type() == at::kFloat);
  auto gx = torch::empty({16, B}, xT.options());
  auto gt = torch::empty({T * B, 16}, xT.options());
  const float* gp = gT.data_ptr<float>(); const int64_t gs = gT.stride(0);
  const float* xp = xT.data_ptr<float>(); const int64_t xs = xT.stride(0);
  const float* tp = tiled.data_ptr<float>();
  float* gxp = gx.data_ptr<float>(); float* gtp = gt.data_ptr<float>();
  at::parallel_for(0, B / 16, 8, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[16][16][16];
    alignas(64) float S[16][16][16];  // [i][j][sample]
    alignas(64) float out[16][16];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t b = blk * 16;
      for (int k = 0; k < 16; ++k) _mm512_store_ps(buf[0][k], _mm512_loadu_ps(xp + k * xs + b));
      for (int64_t t = 0; t < T; ++t) {
        const float* src = tp + (t * B + b) * 16;
        for (int s = 0; s < 16; ++s)
          for (int k = 0; k < 16; ++k) buf[t + 1][k][s] = src[s * 16 + k];
      }
      int64_t p = 0;
      for (int64_t i = 1; i < F; ++i)
        for (int64_t j = 0; j < i; ++j, ++p) {
          __m512 v = _mm512_loadu_ps(gp + (16 + p) * gs + b);
          _mm512_store_ps(S[i][j], v); _mm512_store_ps(S[j][i], v);
        }
      for (int64_t i = 0; i < F; ++i) {
        for (int k = 0; k < 16; ++k) {
          __m512 acc = _mm512_setzero_ps();
          for (int64_t j = 0; j < F; ++j) {
            if (j == i) continue;
            acc = _mm512_fmadd_ps(_mm512_load_ps(S[i][j]), _mm512_load_ps(buf[j][k]), acc);
          }
          if (i == 0) {
            acc = _mm512_add_ps(acc, _mm512_loadu_ps(gp + k * gs + b));
            _mm512_storeu_ps(gxp + k * B + b, acc);
          } else {
            _mm512_store_ps(out[k], acc);
          }
        }
        if (i > 0) {
          float* dst = gtp + ((i - 1) * B + b) * 16;
          for (int s = 0; s < 16; ++s)
            for (int k = 0; k < 16; ++k) dst[s * 16 + k] = out[k][s];
        }
      }
    }
  });
  return {gx, gt};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_sgd_rows", &sparse_sgd_rows);
  m.def("dot_fwd", &dot_fwd);
  m.def("dot_bwd", &dot_bwd);
}
