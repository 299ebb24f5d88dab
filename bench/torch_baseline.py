#!/usr/bin/env python3
"""What a user would otherwise run: vLLM's native RoPE and Hugging Face's formula, eager and under torch.compile, timed like posenc_bench_gpu.

Measured on the same card, in the same way as bench_gpu.cu, and written in the same CSV columns so
that report.py can put both in one table:

* the floor: torch's own copy bandwidth, ``y.copy_(x)`` of 1 GiB, bytes = read + write, median of 30;
* each case: one call per event pair (torch.cuda.Event), median of many, inputs rotating among
  enough sets that the working set is >= 4x L2; for T <= 1024 also the per-call time of calls
  replayed from a CUDA graph (torch.cuda.CUDAGraph);
* bytes = 2 x (Q bytes + K bytes), the same count as posenc's, so "share of floor" compares
  directly even though the formula moves many more bytes than that (cos/sin tables, rotate_half
  copies, the concatenations).

Variants (bf16, Q [T, 32, 128], K [T, 8, 128], int64 positions in [0, 8192)), in this order (the
first ones are the strongest baselines, and a short time budget keeps them):

* ``vllm_half_split`` / ``vllm_interleaved``: vLLM's native formula (``RotaryEmbedding.forward_static``
  with ``ApplyRotaryEmb.forward_static``, is_neox_style True / False): the cos/sin cache (float32
  ``[cos | sin]`` of ``t * inv_freq``, kept in the model dtype as vLLM keeps it) indexed by position,
  split into cos and sin, rotate (``x1*cos - x2*sin``, ``x2*cos + x1*sin``), concatenate (or stack
  for adjacent pairs), then ``copy_`` back into Q and K, in place as engines call RoPE. Under
  ``torch.compile`` with static shapes (``dynamic=False``, ``fullgraph=True``): one compilation per T,
  before the timing (``torch._dynamo.reset()`` between Ts, so no cache limit falls back to eager);
* ``hf_half_split``: transformers' ``LlamaRotaryEmbedding.forward`` (cos/sin from the positions, in
  float32, cast to bf16: HF does this once per forward) plus ``apply_rotary_pos_emb``
  (``q*cos + rotate_half(q)*sin``), both inside the timed region;
* ``hf_half_split_cached``: the same apply with cos/sin precomputed outside the timed region;
* ``glm_interleaved``: the HF Glm/Glm4 form (cos/sin halves ``repeat_interleave``d, pairwise
  ``rotate_half``, rotary part sliced and concatenated back), cos/sin inside the timed region.

The HF variants run in eager mode (``torch_eager``) and under ``torch.compile`` (``torch_compile``,
dynamic shapes so that one compilation serves the sweep), vLLM's under both too (static shapes).
Nothing is downloaded; only torch is needed.
"""

import argparse
import csv
import math
import os
import statistics
import sys
import time

COLUMNS = [
    "card", "engine", "variant", "dtype", "pairing", "numerics", "Hq", "Hk", "D", "R", "T", "threads",
    "median_us", "graph_us_per_call", "bytes", "bytes_whole", "GBps", "floor_GBps", "floor_kind", "ratio",
    "verified", "note",
]

HQ, HK, HEAD_DIM = 32, 8, 128
POSITION_RANGE = 8192
TOKENS = [1, 8, 64, 256, 1024, 4096, 16384, 65536]
QUICK_TOKENS = [1, 64, 4096, 65536]


# ---- the formulas, as transformers 5.x writes them ------------------------------------------------

def hf_cos_sin(torch, inv_freq, positions, dtype, attention_scaling=1.0):
    """LlamaRotaryEmbedding.forward for one sequence: float32 matmul of inv_freq by the positions."""
    position_ids = positions[None, :]
    inv_freq_expanded = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    with torch.autocast(device_type="cuda", enabled=False):
        freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * attention_scaling
        sin = emb.sin() * attention_scaling
    return cos.to(dtype=dtype)[0], sin.to(dtype=dtype)[0]  # [T, D]


def rotate_half(torch, x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_half_split(torch, q, k, cos, sin):
    # HF unsqueezes at the head axis; Q/K here are [T, H, D], so the head axis is 1.
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(torch, q) * sin), (k * cos) + (rotate_half(torch, k) * sin)


def rotate_half_interleaved(torch, x):
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_glm_interleaved(torch, q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)
    sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)
    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = (q_rot * cos) + (rotate_half_interleaved(torch, q_rot) * sin)
    k_embed = (k_rot * cos) + (rotate_half_interleaved(torch, k_rot) * sin)
    return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)


# ---- vLLM's native path (vllm/model_executor/layers/rotary_embedding: base.py, common.py) ---------

def vllm_cos_sin_cache(torch, base, rotary_dim, max_position, dtype):
    """RotaryEmbeddingBase._compute_cos_sin_cache, then ``cache.to(dtype)`` as its __init__ does."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    t = torch.arange(max_position, dtype=torch.float)
    freqs = torch.einsum("i,j -> ij", t, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)


def vllm_apply_rotary_emb(torch, x, cos, sin, is_neox_style):
    """ApplyRotaryEmb.forward_static (apply_rotary_emb_torch)."""
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    if is_neox_style:
        x1, x2 = torch.chunk(x, 2, dim=-1)
    else:
        x1 = x[..., ::2]
        x2 = x[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    if is_neox_style:
        return torch.cat((o1, o2), dim=-1)
    return torch.stack((o1, o2), dim=-1).flatten(-2)


def vllm_forward_static(torch, positions, query, key, head_size, rotary_dim, cos_sin_cache, is_neox_style):
    """RotaryEmbedding.forward_static: index the cache by position, split, rotate, concatenate."""
    positions = positions.flatten()
    num_tokens = positions.shape[0]
    cos_sin = cos_sin_cache.index_select(0, positions)
    cos, sin = cos_sin.chunk(2, dim=-1)
    query_shape = query.shape
    query = query.view(num_tokens, -1, head_size)
    query_rot = query[..., :rotary_dim]
    query_pass = query[..., rotary_dim:]
    query_rot = vllm_apply_rotary_emb(torch, query_rot, cos, sin, is_neox_style)
    query = torch.cat((query_rot, query_pass), dim=-1).reshape(query_shape)
    key_shape = key.shape
    key = key.view(num_tokens, -1, head_size)
    key_rot = key[..., :rotary_dim]
    key_pass = key[..., rotary_dim:]
    key_rot = vllm_apply_rotary_emb(torch, key_rot, cos, sin, is_neox_style)
    key = torch.cat((key_rot, key_pass), dim=-1).reshape(key_shape)
    return query, key


def reference_f64(torch, q, positions, inv_freq, interleaved):
    """float64 rotation of q (the same inv_freq), to check that each variant computes RoPE."""
    angle = positions.double()[:, None] * inv_freq.double()[None, :]  # [T, D/2]
    c, s = angle.cos()[:, None, :], angle.sin()[:, None, :]
    x = q.double()
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat((a * c - b * s, b * c + a * s), dim=-1)


# ---- timing ----------------------------------------------------------------------------------------

def time_each(torch, n, call):
    """Per-call microseconds, one event pair around each call, the host never waiting in between."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        starts[i].record()
        call(i)
        stops[i].record()
    torch.cuda.synchronize()
    return [1e3 * a.elapsed_time(b) for a, b in zip(starts, stops)]


def time_block(torch, n, call):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(n):
        call(i)
    stop.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(stop) / n


def measure_copy_floor(torch, reps=30):
    n = (1 << 30) // 4
    x = torch.rand(n, device="cuda", dtype=torch.float32) + 0.5
    y = torch.empty_like(x)
    copy = lambda i: y.copy_(x)  # noqa: E731
    time_each(torch, 3, copy)
    us = statistics.median(time_each(torch, reps, copy))
    return 2.0 * (n * 4) / (us * 1e3), 2 * n * 4


# ---- the sweep -------------------------------------------------------------------------------------

class Sets:
    """Several input sets of one T, views into three allocations, taken in turn."""

    def __init__(self, torch, tokens, l2_bytes, dtype, inv_freq, cached):
        set_bytes = tokens * (HQ + HK) * HEAD_DIM * 2 + tokens * 8
        n = max(2, math.ceil(4 * l2_bytes / set_bytes))
        n = min(n, 1 << 16)
        self.q = torch.randn(n, tokens, HQ, HEAD_DIM, device="cuda", dtype=dtype)
        self.k = torch.randn(n, tokens, HK, HEAD_DIM, device="cuda", dtype=dtype)
        self.positions = torch.randint(0, POSITION_RANGE, (n, tokens), device="cuda", dtype=torch.int64)
        self.cos = self.sin = None
        if cached:
            # One call over every set's positions at once: the per-token values are the same as
            # per-set calls would give (each token's angle depends on its own position only).
            cos, sin = hf_cos_sin(torch, inv_freq, self.positions.reshape(-1), dtype)
            self.cos = cos.reshape(n, tokens, -1)
            self.sin = sin.reshape(n, tokens, -1)
        self.n = n
        self.next = 0

    def take(self):
        i = self.next % self.n
        self.next += 1
        return i


def run_case(torch, card, engine, variant, fn, tokens, l2_bytes, inv_freq, floor_gbps, graph):
    pairing = "interleaved" if variant.startswith("glm") or variant.endswith("_interleaved") else "half_split"
    cached = variant.endswith("_cached")
    bytes_moved = 2.0 * tokens * (HQ + HK) * HEAD_DIM * 2
    row = {
        "card": card, "engine": engine, "variant": variant, "dtype": "bfloat16", "pairing": pairing,
        "numerics": ("inductor_fused" if engine == "torch_compile"
                     else "vllm_native" if variant.startswith("vllm") else "hf_compatible"),
        "Hq": HQ, "Hk": HK, "D": HEAD_DIM, "R": HEAD_DIM, "T": tokens, "threads": "",
        "bytes": f"{bytes_moved:.0f}", "bytes_whole": f"{bytes_moved:.0f}",
        "floor_GBps": f"{floor_gbps:.1f}", "floor_kind": "torch_copy", "note": "",
    }
    sets = Sets(torch, tokens, l2_bytes, torch.bfloat16, inv_freq, cached)

    def call_set(i):
        if cached:
            return fn(sets.q[i], sets.k[i], sets.cos[i], sets.sin[i])
        return fn(sets.q[i], sets.k[i], sets.positions[i])

    # Check once that the variant computes RoPE: first tokens of set 0 against float64 (of the input
    # as it was before the call: the vLLM variants rotate in place).
    check = min(tokens, 256)
    q_in = sets.q[0][:check].clone()
    q_out, _ = call_set(0)
    ref = reference_f64(torch, q_in, sets.positions[0][:check], inv_freq, pairing == "interleaved")
    err = ((q_out[:check].double() - ref).norm() / ref.norm()).item()
    row["verified"] = f"rel_err={err:.1e} vs float64" + ("" if err < 1e-2 else " FAILED")

    call = lambda _: call_set(sets.take())  # noqa: E731
    for _ in range(3):
        call(0)
    estimate = max(0.5, time_block(torch, 5, call))
    launches = int(min(1000, max(20, 1.5e5 / estimate)))
    median_us = statistics.median(time_each(torch, launches, call))
    gbps = bytes_moved / (median_us * 1e3)
    row.update({"median_us": f"{median_us:.3f}", "GBps": f"{gbps:.1f}", "ratio": f"{gbps / floor_gbps:.4f}"})
    notes = [f"sets={sets.n} launches={launches}"]

    if graph and tokens <= 1024:
        try:
            calls = 100 if tokens <= 64 else 20
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    call(0)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(calls):
                    call(0)
            replay = lambda _: g.replay()  # noqa: E731
            time_each(torch, 3, replay)
            graph_us = statistics.median(time_each(torch, 20, replay)) / calls
            row["graph_us_per_call"] = f"{graph_us:.3f}"
            notes.append(f"graph_calls={calls}")
            del g
        except Exception as e:  # a variant that cannot be captured still has its eager timing
            notes.append(f"graph: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    row["note"] = "; ".join(notes)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="directory for torch_baseline.csv")
    parser.add_argument("--quick", action="store_true", help=f"T in {QUICK_TOKENS} only")
    parser.add_argument("--tokens", help="comma-separated token counts")
    parser.add_argument("--budget-s", type=float, default=110.0,
                        help="stop starting new cases after this many seconds (default 110)")
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    parser.add_argument("--variants", help="comma-separated words: run only the engine/variant names containing one "
                        "(e.g. vllm, torch_compile/vllm, hf_half_split)")
    args = parser.parse_args()

    t_begin = time.monotonic()
    try:
        import torch
    except ImportError as e:
        print(f"torch_baseline: PyTorch is not importable ({e}); nothing measured", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("torch_baseline: no CUDA device visible to PyTorch; nothing measured", file=sys.stderr)
        return 1

    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else (QUICK_TOKENS if args.quick else TOKENS)
    card = torch.cuda.get_device_name()
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"torch {torch.__version__} on {card}, L2 {l2_bytes >> 20} MiB")
    torch.manual_seed(0)
    floor_gbps, floor_bytes = measure_copy_floor(torch)
    torch.cuda.empty_cache()  # give the 2 GiB of the copy back before the sweep
    print(f"floor: torch copy_ of 1 GiB: {floor_gbps:.0f} GB/s")

    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.int64).to(
        device="cuda", dtype=torch.float) / HEAD_DIM))

    def hf_full(q, k, positions):
        cos, sin = hf_cos_sin(torch, inv_freq, positions, q.dtype)
        return apply_half_split(torch, q, k, cos, sin)

    def hf_cached(q, k, cos, sin):
        return apply_half_split(torch, q, k, cos, sin)

    def glm_full(q, k, positions):
        cos, sin = hf_cos_sin(torch, inv_freq, positions, q.dtype)
        return apply_glm_interleaved(torch, q, k, cos, sin)

    cos_sin_cache = vllm_cos_sin_cache(torch, 10000.0, HEAD_DIM, POSITION_RANGE, torch.bfloat16).to("cuda")

    def vllm_inplace(is_neox_style):
        def fn(q, k, positions):
            q_out, k_out = vllm_forward_static(torch, positions, q, k, HEAD_DIM, HEAD_DIM, cos_sin_cache,
                                               is_neox_style)
            q.copy_(q_out)
            k.copy_(k_out)
            return q, k
        return fn

    def static_compile(fn):
        def make(_tokens):
            # One static-shape compilation per T; a reset keeps the recompile limit from ever
            # sending a later T back to eager.
            torch._dynamo.reset()
            return torch.compile(fn, dynamic=False, fullgraph=True)
        return make

    def same(fn):
        return lambda _tokens: fn

    # (engine, variant, make): make(T) gives the callable timed at T.
    variants = []
    for name, fn in (("vllm_half_split", vllm_inplace(True)), ("vllm_interleaved", vllm_inplace(False))):
        if not args.no_compile:
            variants.append(("torch_compile", name, static_compile(fn)))
        variants.append(("torch_eager", name, same(fn)))
    hf = [("hf_half_split", hf_full), ("hf_half_split_cached", hf_cached), ("glm_interleaved", glm_full)]
    variants += [("torch_eager", name, same(fn)) for name, fn in hf]
    if not args.no_compile:
        variants += [("torch_compile", name, same(torch.compile(fn, dynamic=True))) for name, fn in hf]
    if args.variants:
        words = [w for w in args.variants.split(",") if w]
        variants = [v for v in variants if any(w in f"{v[0]}/{v[1]}" for w in words)]

    rows = [{
        "card": card, "engine": "floor", "variant": "floor_torch_copy", "dtype": "float32",
        "bytes": f"{floor_bytes:.0f}", "bytes_whole": f"{floor_bytes:.0f}", "GBps": f"{floor_gbps:.1f}",
        "median_us": f"{floor_bytes / (floor_gbps * 1e3):.3f}", "floor_GBps": f"{floor_gbps:.1f}",
        "floor_kind": "torch_copy", "ratio": "1.0000", "verified": "n/a", "note": "y.copy_(x), 1 GiB",
    }]
    print(f"{'engine':<14} {'variant':<22} {'T':>6} {'us':>10} {'graph_us':>9} {'GB/s':>8} {'share':>7}  verified")
    skipped = []
    interrupted = False
    for engine, variant, make in variants:
        for t in tokens:
            if interrupted or time.monotonic() - t_begin > args.budget_s:
                skipped.append(f"{engine}/{variant}/T={t}")
                continue
            try:
                row = run_case(torch, card, engine, variant, make(t), t, l2_bytes, inv_freq, floor_gbps, graph=True)
            except KeyboardInterrupt:  # run.sh's time limit: keep what was measured
                interrupted = True
                skipped.append(f"{engine}/{variant}/T={t}")
                continue
            except Exception as e:  # one failing case (out of memory, a compile error) must not end the sweep
                row = {"card": card, "engine": engine, "variant": variant, "dtype": "bfloat16", "T": t,
                       "verified": f"error: {type(e).__name__}", "note": str(e).splitlines()[0][:200] if str(e) else ""}
                torch.cuda.empty_cache()
            rows.append(row)
            share = f"{100 * float(row['ratio']):.1f}%" if row.get("ratio") else "n/a"
            print(f"{engine:<14} {variant:<22} {t:>6} {row.get('median_us', ''):>10} "
                  f"{row.get('graph_us_per_call', ''):>9} {row.get('GBps', ''):>8} {share:>7}  {row.get('verified', '')}",
                  flush=True)
    if skipped:
        why = "interrupted" if interrupted else f"time budget of {args.budget_s:.0f} s reached"
        print(f"torch_baseline: {why}; skipped {len(skipped)} cases: "
              + ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""))

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "torch_baseline.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    print(f"wrote {path} ({time.monotonic() - t_begin:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
