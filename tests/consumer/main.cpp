// Consumer of the installed posenc package: rotates a small tensor with CpuEngine and checks one value.
#include <posenc/posenc.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

int main() {
  posenc::RopeSpec spec;  // default theta 10000, half_split, hf_compatible
  spec.head_dim = 8;
  const posenc::CpuEngine engine(spec);

  // Two tokens of one head, every element 1; positions 0 and 1.
  std::vector<float> q(2 * 8, 1.0f);
  const std::vector<std::int64_t> positions = {0, 1};
  posenc::RopeArgs args;
  args.q = posenc::TensorView::contiguous(q.data(), posenc::DType::f32, 2, 1, 8);
  args.positions = {positions.data(), posenc::IndexType::i64, 2};
  engine.apply(args);

  // Pair 0 of token 1 is (x[0], x[4]) rotated by 1 radian (inv_freq[0] = 1): cos 1 - sin 1.
  const double want = std::cos(1.0) - std::sin(1.0);
  const double got = q[8];
  std::printf("posenc %s: q[1][0][0] = %.9g, want %.9g; GPU %s\n", posenc::version_string, got, want,
              posenc::gpu::available() ? "available" : posenc::gpu::unavailable_reason().c_str());
  if (std::fabs(got - want) > 1e-6 || q[0] != 1.0f) {
    std::fprintf(stderr, "posenc consumer: wrong rotation (got %.9g, want %.9g; position 0 gave %.9g)\n",
                 got, want, static_cast<double>(q[0]));
    return 1;
  }
  if (std::strcmp(posenc::gpu::backend_name(), POSENC_PACKAGE_BACKEND) != 0) {
    std::fprintf(stderr, "posenc consumer: the package says backend %s, the library %s\n", POSENC_PACKAGE_BACKEND,
                 posenc::gpu::backend_name());
    return 1;
  }
  return 0;
}
