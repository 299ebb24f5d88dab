// append_reference: the definition of the fused RoPE + KV-cache append (apply_reference on Q and K, then the plain cast-and-scatter pass).
#include <cstdint>
#include <memory>

#include "core/kv_detail.hpp"
#include "core/memory.hpp"
#include "posenc/cpu.hpp"
#include "posenc/kv_cache.hpp"

namespace posenc {

// A function-try-block: validation's strings and the tables are small allocations too.
void append_reference(const RopeSpec& spec, const AppendArgs& args) try {
  spec.validate();
  detail::validate_append(spec, args);  // everything, before any write

  // K is rotated into a dense scratch tensor of its own dtype: the caller's K is not written. So is
  // Q when it goes to q_out (the caller's Q is then the input).
  const ConstTensorView& k = args.k;
  const TensorView& q = args.q;
  const std::int64_t k_words = detail::ScatterCall::scratch_words(k);
  const std::int64_t q_words = args.q_out.present() ? detail::ScatterCall::scratch_words(q) : 0;
  const auto scratch = detail::allocating("append_reference's K (and Q) scratch", (k_words + q_words) * 4, [&] {
    return std::make_unique<std::uint32_t[]>(static_cast<std::size_t>(k_words + q_words));
  });
  const TensorView rotated_k = TensorView::contiguous(scratch.get(), k.dtype, k.tokens, k.heads, k.head_dim);
  const TensorView rotated_q =
      args.q_out.present() ? TensorView::contiguous(scratch.get() + k_words, q.dtype, q.tokens, q.heads, q.head_dim)
                           : TensorView{};

  apply_reference(spec, detail::append_rotation(args, rotated_k, rotated_q));

  const detail::ScatterCall call = detail::scatter_call(args, rotated_k, rotated_q);
  detail::scatter_tokens(&call, 0, args.positions.count);
} catch (const std::bad_alloc&) {
  detail::throw_out_of_host_memory("the working memory of append_reference");
}

}  // namespace posenc
