#!/usr/bin/env python3
"""The Python package's ops on the GPU: per-call host overhead, and the engines' contract against vLLM's native formula.

Run on a CUDA machine after `pip install .` (scripts/gpu-all.sh does). Everything in one process, one card:

* overhead: for each op, the wall time of a call at T = 1 in eager mode (N calls back to back, then one
  synchronize; the GPU work of a call is ~2-5 us, so the wall time per call is the host's cost), next to
  torch's own cheapest in-place op (`x.add_(1)`) as the dispatcher's floor; and the device time per call
  when the same calls are replayed from a CUDA graph (host cost gone);
* contract: `posenc.rotary_embedding` (caller's cos/sin cache) and `posenc.apply_rope_` (spec path),
  against vLLM's `forward_native` formula (index the cache by position, split, rotate, concatenate, copy_
  back in place as vLLM does) in eager mode and under torch.compile with static shapes (one compile per
  T, outside the timing), bf16 Q [T, 32*128], K [T, 8*128], cos/sin cache [131072, 128] bf16, positions
  uniform in [0, 131072). Each call timed by a CUDA event pair, median of many; input sets rotate so the
  working set is >= 4x L2 for T >= 256; T <= 256 also graph-replayed per call. The floor: a copy of the
  same bytes (Q and K read + written) by torch's copy_ at the same T, and a 1 GiB copy.
* prologue (issue 14): Qwen3-8B's attention prologue, bf16 Q [T, 32, 128] and K [T, 8, 128] from
  configs/qwen3-8b-yarn.json: per-head q_norm/k_norm (Qwen3RMSNorm) then RoPE. posenc's fused call
  (`apply_rope_` with `q_norm_weight`/`k_norm_weight`, one launch) against the same stages unfused
  (torch's RMSNorm ops, then posenc's rotation), the HF eager chain (q_norm, rotary module, `apply_rotary_pos_emb`)
  and that chain under torch.compile with static shapes; the floor is the same-size copy. The fused
  call's output is compared with the HF eager chain bit for bit.
* serving (issue 14): the same prologue for fp8 serving: K and V also go into an fp8 paged cache and Q
  to an fp8 q_out, one `append_kv_` call against the stages as separate ops (torch RMSNorm, posenc RoPE,
  torch's clamp-and-cast, a scatter into the cache); their bytes are compared; the floor is copy_ of
  the fused call's bytes (Q, K, V read as bf16 and written once as fp8).
* mla (issue 14): DeepSeek-V3's multi-head latent attention prologue from configs/deepseek-v3.json:
  q_pe, the last 64 of each head's 192 elements of bf16 q_full [T, 128, 192], rotated in place; k_pe
  rotated and [c_kv | k_pe] (576 per token, from the bf16 kv_a output [T, 576]) written into the paged
  latent cache [blocks, 64, 576], bf16 and fp8 (scale 0.5). One `append_kv_(layout="mla")` call against
  what an engine without the fused write runs: posenc's RoPE of q_pe and of a copy of k_pe, then torch's
  cat of [c_kv | k_pe] and a scatter into the cache (the cast on the way for fp8). Their bytes are
  compared; the floor is copy_ of the fused call's bytes (q_pe read and written, [c_kv | k_pe] read,
  the cache rows written).
Writes CSV rows (--csv) and prints a Markdown table.
"""

import argparse
import csv
import statistics
import sys
import time

import torch

import posenc

HQ, HK, D = 32, 8, 128
MAX_POS = 131072


def vllm_native(positions, query, key, head_size, cos_sin_cache, is_neox):
    """vLLM's RotaryEmbedding.forward_native, in place through copy_ as vLLM's custom-op wrapper does."""
    positions = positions.flatten()
    n = positions.shape[0]
    cos, sin = cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)
    rot = cos_sin_cache.shape[1]
    for x in (query, key):
        shape = x.shape
        v = x.view(n, -1, head_size)
        xr = v[..., :rot]
        c, s = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
        if is_neox:
            x1, x2 = torch.chunk(xr, 2, dim=-1)
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        else:
            x1, x2 = xr[..., ::2], xr[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        if rot < head_size:
            out = torch.cat((out, v[..., rot:]), dim=-1)
        x.copy_(out.reshape(shape))


def event_time(fn, sets, reps):
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    stop = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(3):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    for i in range(reps):
        args = sets[i % len(sets)]
        start[i].record()
        fn(*args)
        stop[i].record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) * 1e3 for a, b in zip(start, stop))


def graph_time(fn, args, calls=50, replays=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn(*args)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times)


def host_time(fn, args, calls=2000):
    for _ in range(20):
        fn(*args)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e6 / calls


def make_sets(T, n_sets, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(T)
    sets = []
    for _ in range(n_sets):
        q = torch.randn((T, HQ * D), device="cuda", generator=g).to(dtype)
        k = torch.randn((T, HK * D), device="cuda", generator=g).to(dtype)
        pos = torch.randint(0, MAX_POS, (T,), device="cuda", generator=g)
        sets.append((pos, q, k))
    return sets


def overhead_rows(card):
    spec = posenc.RopeSpec(head_dim=D, theta=5e5)
    cache = make_cache()
    (pos, q, k), = make_sets(1, 1)
    v = torch.randn_like(k)
    slots = torch.zeros(1, dtype=torch.long, device="cuda")
    kc = torch.zeros((16, 16, HK, D), dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    q3, k3, v3 = q.view(1, HQ, D), k.view(1, HK, D), v.view(1, HK, D)
    ops = {
        "torch x.add_(1) (dispatcher floor)": (lambda q: q.add_(1), (q,)),
        "torch.ops.posenc.apply_rope_": (lambda p, q, k: torch.ops.posenc.apply_rope_(q, k, p, spec.id), (pos, q3, k3)),
        "posenc.apply_rope_": (lambda p, q, k: posenc.apply_rope_(q, k, p, spec), (pos, q3, k3)),
        "posenc.apply_rope (out of place)": (lambda p, q, k: posenc.apply_rope(q, k, p, spec), (pos, q3, k3)),
        "posenc.append_kv_": (lambda p, q, k, v: posenc.append_kv_(q, k, v, p, slots, kc, vc, spec), (pos, q3, k3, v3)),
        "posenc.rotary_embedding": (lambda p, q, k: posenc.rotary_embedding(p, q, k, D, cache, True), (pos, q, k)),
        "vLLM forward_native (eager)": (lambda p, q, k: vllm_native(p, q, k, D, cache, True), (pos, q, k)),
    }
    rows = []
    for name, (fn, args) in ops.items():
        rows.append(dict(card=card, kind="overhead", variant=name, T=1, host_us=host_time(fn, args),
                         graph_us=graph_time(fn, args)))
    return rows


def make_cache():
    inv = 1.0 / (1e4 ** (torch.arange(0, D, 2, dtype=torch.float32, device="cuda") / D))
    f = torch.arange(MAX_POS, dtype=torch.float32, device="cuda")[:, None] * inv
    return torch.cat((f.cos(), f.sin()), dim=-1).to(torch.bfloat16)


def copy_floor(T, sets):
    """The same bytes moved by torch's copy_, into buffers of their own (the sets stay intact)."""
    dst = [(p, torch.empty_like(q), torch.empty_like(k)) for p, q, k in sets]

    def fn(i):
        _, q, k = sets[i]
        _, dq, dk = dst[i]
        dq.copy_(q)
        dk.copy_(k)
    return event_time(fn, [(i,) for i in range(len(sets))], reps_for(T))


def reps_for(T):
    return 200 if T <= 4096 else 50


def input_sets(T):
    """Bytes moved by a Q+K call at T, and enough input sets to keep the working set >= 4x L2."""
    bytes_moved = 2 * T * (HQ + HK) * D * 2
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    n_sets = max(2, min(64, (4 * l2) // max(1, bytes_moved // 2) + 1))
    return bytes_moved, make_sets(T, n_sets)


def time_variants(card, kind, T, variants, sets, pristine, reference, bytes_moved, checked, graphed):
    """One row per variant: its output on the pristine (p, q, k) against `reference` (for the names
    `checked` accepts), its median event time over the sets, graph-replayed time where `graphed`
    accepts the name, and the ratio to the same-size copy."""
    p, q, k = pristine
    ref_q, ref_k = reference
    floor_us = copy_floor(T, sets)
    rows = []
    for name, fn in variants.items():
        qq, kk = q.clone(), k.clone()
        fn(p, qq, kk)
        torch.cuda.synchronize()
        verified = str(bool(torch.equal(qq, ref_q) and torch.equal(kk, ref_k))) if checked(name) else ""
        us = event_time(fn, sets, reps_for(T))
        gus = graph_time(fn, sets[0]) if graphed(name) else None
        rows.append(dict(card=card, kind=kind, variant=name, T=T, median_us=us, graph_us=gus,
                         GBps=bytes_moved / us / 1e3, floor_us=floor_us, ratio=floor_us / us, verified=verified))
    return rows


def contract_rows(card, tokens):
    spec = posenc.RopeSpec(head_dim=D, theta=1e4)
    cache = make_cache()
    rows = []
    for T in tokens:
        bytes_moved, sets = input_sets(T)
        # Correctness first: every variant gives the same bits as vLLM's eager formula.
        p, q, k = sets[0]
        q, k = q.clone(), k.clone()  # pristine: timing rotates the sets in place, call after call
        ref_q, ref_k = q.clone(), k.clone()
        vllm_native(p, ref_q, ref_k, D, cache, True)
        torch._dynamo.reset()
        compiled = torch.compile(vllm_native, dynamic=False, fullgraph=True)
        variants = {
            "posenc.rotary_embedding": lambda p, q, k: posenc.rotary_embedding(p, q, k, D, cache, True),
            "posenc.apply_rope_ (spec)": lambda p, q, k: posenc.apply_rope_(q.view(T, HQ, D), k.view(T, HK, D), p, spec),
            "vLLM native, eager": lambda p, q, k: vllm_native(p, q, k, D, cache, True),
            "vLLM native, torch.compile static": lambda p, q, k: compiled(p, q, k, D, cache, True),
        }
        rows += time_variants(card, "contract", T, variants, sets, (p, q, k), (ref_q, ref_k), bytes_moved,
                              checked=lambda name: "spec" not in name, graphed=lambda name: T <= 256)
        posenc.check()
    return rows


def prologue_rows(card, tokens):
    """Qwen3's q_norm/k_norm + RoPE: posenc fused vs the stages apart (see the module docstring)."""
    import os
    from transformers.models.qwen3 import modeling_qwen3 as mq
    from transformers import Qwen3Config
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    config_path = os.path.join(root, "configs", "qwen3-8b-yarn.json")
    spec = posenc.RopeSpec.from_config(config_path)
    rope_only = spec.replace(qk_norm="none")
    cfg = Qwen3Config.from_json_file(config_path)
    rotary = mq.Qwen3RotaryEmbedding(cfg).to("cuda")  # inv_freq built on the CPU, as from_pretrained does
    g = torch.Generator(device="cuda").manual_seed(7)
    wq = (1 + 0.3 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    wk = (1 + 0.3 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    eps = cfg.rms_norm_eps

    def rms(x, w):  # Qwen3RMSNorm.forward, op for op
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return w * h.to(x.dtype)

    def hf_chain(p, q, k):
        qs, ks = rms(q.view(1, -1, HQ, D), wq).transpose(1, 2), rms(k.view(1, -1, HK, D), wk).transpose(1, 2)
        cos, sin = rotary(qs, p.view(1, -1))
        qo, ko = mq.apply_rotary_pos_emb(qs, ks, cos, sin)
        q.copy_(qo.transpose(1, 2).reshape(q.shape))
        k.copy_(ko.transpose(1, 2).reshape(k.shape))

    def unfused(p, q, k):
        q.copy_(rms(q.view(-1, HQ, D), wq).view(q.shape))
        k.copy_(rms(k.view(-1, HK, D), wk).view(k.shape))
        posenc.apply_rope_(q.view(-1, HQ, D), k.view(-1, HK, D), p, rope_only)

    def fused(p, q, k):
        posenc.apply_rope_(q.view(-1, HQ, D), k.view(-1, HK, D), p, spec, q_norm_weight=wq, k_norm_weight=wk)

    rows = []
    for T in tokens:
        bytes_moved, sets = input_sets(T)
        p, q, k = sets[0]
        q, k = q.clone(), k.clone()  # pristine: timing rotates the sets in place
        ref_q, ref_k = q.clone(), k.clone()
        hf_chain(p, ref_q, ref_k)
        torch._dynamo.reset()
        compiled = torch.compile(hf_chain, dynamic=False, fullgraph=False)
        variants = {
            "posenc fused (norm + RoPE, one launch)": fused,
            "torch RMSNorm ops + posenc RoPE": unfused,
            "HF eager chain": hf_chain,
            "HF chain, torch.compile static": compiled,
        }
        rows += time_variants(card, "prologue", T, variants, sets, (p, q, k), (ref_q, ref_k), bytes_moved,
                              checked=lambda name: "fused" in name,
                              graphed=lambda name: T <= 256 and "compile" not in name)
        posenc.check()
    return rows


def fused_and_unfused_rows(card, kind, T, n_sets, bytes_moved, same, fused_name, fused, unfused_name, unfused):
    """Rows of one T for a fused call and its unfused stages, each fn(i) on input set i: median event
    time over the sets, graph-replayed time at T <= 256, and the ratio to torch's copy_ of
    `bytes_moved` (half read, half written). `same`: whether both gave the same bytes (the fused row's
    verdict)."""
    src = torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    floor_us = event_time(lambda: dst.copy_(src), [()], reps_for(T))
    rows = []
    for name, fn in ((fused_name, fused), (unfused_name, unfused)):
        us = event_time(fn, [(i,) for i in range(n_sets)], reps_for(T))
        gus = graph_time(fn, (0,)) if T <= 256 else None
        rows.append(dict(card=card, kind=kind, variant=name, T=T, median_us=us, graph_us=gus,
                         GBps=bytes_moved / us / 1e3, floor_us=floor_us, ratio=floor_us / us,
                         verified=str(same) if fn is fused else ""))
    return rows


def serving_rows(card, tokens):
    """fp8 serving's prologue, Qwen3-8B: per-head q/k RMSNorm, RoPE, K and V into an fp8 paged cache
    and Q to fp8 (q_out), one posenc.append_kv_ call, against the same stages as separate ops
    (torch's RMSNorm ops, posenc's RoPE, torch's clamp-and-cast of Q, K and V, a scatter into the
    cache). Both must give the same bytes; the floor is torch's copy_ of the fused call's bytes."""
    import os
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    spec = posenc.RopeSpec.from_config(os.path.join(root, "configs", "qwen3-8b-yarn.json"))
    rope_only = spec.replace(qk_norm="none")
    eps = spec.qk_norm_epsilon
    g = torch.Generator(device="cuda").manual_seed(9)
    wq = (1 + 0.3 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    wk = (1 + 0.3 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    fp8, k_scale, v_scale, q_scale, page = torch.float8_e4m3fn, 0.5, 0.5, 0.25, 16

    def rms(x, w):  # Qwen3RMSNorm.forward, op for op
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return w * h.to(x.dtype)

    def quant(x, scale):
        return (x.float() / scale).clamp(-448, 448).to(fp8)

    rows = []
    for T in tokens:
        blocks = T // page + 2
        elems = T * (HQ + 2 * HK) * D
        bytes_moved = elems * 3  # Q, K, V read as bf16 (2 bytes), written once as fp8 (1 byte)
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        n_sets = max(2, min(64, (4 * l2) // max(1, elems * 2) + 1))
        sets = []
        for i in range(n_sets):
            q = torch.randn((T, HQ, D), device="cuda", generator=g).to(torch.bfloat16)
            k = torch.randn((T, HK, D), device="cuda", generator=g).to(torch.bfloat16)
            v = torch.randn((T, HK, D), device="cuda", generator=g).to(torch.bfloat16)
            pos = torch.randint(0, MAX_POS, (T,), device="cuda", generator=g)
            slots = torch.randperm(blocks * page, device="cuda", generator=g)[:T]
            caches = [torch.zeros((blocks, page, HK, D), dtype=fp8, device="cuda") for _ in range(2)]
            q8 = torch.zeros((T, HQ, D), dtype=fp8, device="cuda")
            sets.append((pos, q, k, v, slots, caches, q8))

        def fused(i):
            pos, q, k, v, slots, (kc, vc), q8 = sets[i]
            posenc.append_kv_(q, k, v, pos, slots, kc, vc, spec, k_scale=k_scale, v_scale=v_scale,
                              q_norm_weight=wq, k_norm_weight=wk, q_out=q8, q_scale=q_scale)

        def unfused(i):
            pos, q, k, v, slots, (kc, vc), q8 = sets[i]
            qn, kn = rms(q, wq), rms(k, wk)
            posenc.apply_rope_(qn, kn, pos, rope_only)
            q8.copy_(quant(qn, q_scale))
            kc.view(torch.uint8).view(-1, HK, D)[slots] = quant(kn, k_scale).view(torch.uint8)
            vc.view(torch.uint8).view(-1, HK, D)[slots] = quant(v, v_scale).view(torch.uint8)

        # The same bytes from both, on set 0 (Q to q_out; both caches).
        outputs = []
        for fn in (fused, unfused):
            _, _, _, _, _, (kc, vc), q8 = sets[0]
            for t in (kc, vc, q8):
                t.zero_()
            fn(0)
            torch.cuda.synchronize()
            outputs.append([t.view(torch.uint8).clone() for t in (q8, kc, vc)])
        same = all(torch.equal(a, b) for a, b in zip(*outputs))
        rows += fused_and_unfused_rows(card, "serving", T, n_sets, bytes_moved, same,
                                       "posenc append_kv_ (norm + RoPE + fp8 Q/K/V + cache, one launch)", fused,
                                       "torch RMSNorm ops + posenc RoPE + torch fp8 casts + cache scatter", unfused)
        posenc.check()
    return rows


def mla_rows(card, tokens):
    """DeepSeek-V3's MLA prologue, fused (one append_kv_, layout "mla") against RoPE then cat + scatter
    (see the module docstring); the same bytes from both are checked on set 0."""
    import os
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    spec = posenc.RopeSpec.from_config(os.path.join(root, "configs", "deepseek-v3.json"))
    heads, nope, rope, latent, page = 128, 128, 64, 512, 64
    row_len = latent + rope
    g = torch.Generator(device="cuda").manual_seed(11)
    rows = []
    for dtype, scale in ((torch.bfloat16, 1.0), (torch.float8_e4m3fn, 0.5)):
        es = torch.tensor([], dtype=dtype).element_size()
        for T in tokens:
            blocks = T // page + 2
            bytes_moved = T * heads * rope * 2 * 2 + T * row_len * 2 + T * row_len * es
            l2 = torch.cuda.get_device_properties(0).L2_cache_size
            n_sets = max(2, min(64, (4 * l2) // max(1, bytes_moved) + 1))
            sets = []
            for _ in range(n_sets):
                q_full = torch.randn((T, heads, nope + rope), device="cuda", generator=g).to(torch.bfloat16)
                ckv = torch.randn((T, row_len), device="cuda", generator=g).to(torch.bfloat16)
                pos = torch.randint(0, MAX_POS, (T,), device="cuda", generator=g)
                slots = torch.randperm(blocks * page, device="cuda", generator=g)[:T]
                cache = torch.zeros((blocks, page, row_len), dtype=dtype, device="cuda")
                sets.append((q_full, ckv, pos, slots, cache))

            def fused(i):
                q_full, ckv, pos, slots, cache = sets[i]
                posenc.append_kv_(q_full[..., nope:], ckv[:, latent:], ckv[:, :latent], pos, slots, cache, None, spec,
                                  layout="mla", k_scale=scale, v_scale=scale)

            def unfused(i):
                q_full, ckv, pos, slots, cache = sets[i]
                k_pe = ckv[:, latent:].unsqueeze(1).clone()  # the input stays as it was, as in the fused call
                posenc.apply_rope_(q_full[..., nope:], k_pe, pos, spec)
                row = torch.cat((ckv[:, :latent], k_pe.squeeze(1)), dim=-1)
                if dtype != torch.bfloat16:
                    row = (row.float() / scale).clamp(-448, 448).to(dtype)
                cache.view(torch.uint8).view(-1, row_len * es)[slots] = row.view(torch.uint8)

            # The same bytes from both, on a copy of set 0 (q_pe rotated in place; the cache rows).
            outputs = []
            q0, ckv0, pos0, slots0, cache0 = sets[0]
            for fn in (fused, unfused):
                sets[0] = (q0.clone(), ckv0, pos0, slots0, torch.zeros_like(cache0))
                fn(0)
                torch.cuda.synchronize()
                outputs.append((sets[0][0].clone(), sets[0][4].view(torch.uint8).clone()))
            sets[0] = (q0, ckv0, pos0, slots0, cache0)
            same = all(torch.equal(a, b) for a, b in zip(*outputs))
            cache_name = "bf16" if dtype == torch.bfloat16 else "fp8"
            rows += fused_and_unfused_rows(card, "mla", T, n_sets, bytes_moved, same,
                                           f"posenc append_kv_ mla ({cache_name} cache, one launch)", fused,
                                           f"posenc RoPE + torch cat + cache scatter ({cache_name} cache)", unfused)
        posenc.check()
    return rows


def model_rows(card):
    """One 4096-token prefill and one decode step (after it) of a GLM-4-9B-shaped stack of two decoder
    layers with random bf16 weights, transformers' own RoPE vs posenc.transformers.patch; CUDA events,
    median of 10 (prefill) / 50 (decode)."""
    try:
        import transformers
        from posenc import transformers as posenc_tf
    except ImportError as e:
        print(f"python_ops.py: model rows skipped ({e})")
        return []
    cfg = transformers.GlmConfig(vocab_size=32000, hidden_size=4096, intermediate_size=13696, num_hidden_layers=2,
                                 num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                                 partial_rotary_factor=0.5, max_position_embeddings=131072, rope_theta=10000.0, pad_token_id=0,
                                 attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.GlmForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 32000, (1, 4096), device="cuda")
    rows = []
    for patched in (False, True):
        if patched:
            posenc_tf.patch(model)

        def prefill():
            with torch.no_grad():
                return model(input_ids=ids, use_cache=True)

        out = prefill()
        cache = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)

        def decode():
            with torch.no_grad():
                c = transformers.DynamicCache()
                for i, layer in enumerate(cache.layers):
                    c.update(layer.keys, layer.values, i)
                return c

        base = decode()
        pos = torch.tensor([[4096]], device="cuda")

        def step():
            with torch.no_grad():
                # crop the cache back so every timed step decodes at position 4096
                base.crop(4096)
                return model(input_ids=nxt, past_key_values=base, position_ids=pos, use_cache=True)

        t_prefill = event_time(lambda: prefill(), [()], 10)
        t_decode = event_time(lambda: step(), [()], 50)
        name = "posenc.transformers.patch" if patched else "transformers (unpatched)"
        rows.append(dict(card=card, kind="model", variant=name, T=4096, prefill_ms=t_prefill / 1e3,
                         decode_us=t_decode))
    return rows


def timed_table(rows, kind, variant_header, verified_header):
    """The Markdown table of time_variants' rows of `kind` (nothing when there are none)."""
    mine = [r for r in rows if r["kind"] == kind]
    if not mine:
        return
    print(f"\n| T | {variant_header} | median us | graph us/call | GB/s | % of same-size copy | {verified_header} |")
    print("|---|---|---|---|---|---|---|")
    for r in mine:
        g = f"{r['graph_us']:.2f}" if r["graph_us"] is not None else ""
        print(f"| {r['T']} | {r['variant']} | {r['median_us']:.2f} | {g} | {r['GBps']:.0f} | "
              f"{100 * r['ratio']:.1f} | {r['verified']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=None)
    ap.add_argument("--quick", action="store_true")
    sections = ("overhead", "contract", "model", "prologue", "serving", "mla")
    ap.add_argument("--only", default=",".join(sections),
                    help=f"comma-separated sections to run (default all: {','.join(sections)})")
    a = ap.parse_args()
    only = set(a.only.split(","))
    if not only <= set(sections):
        ap.error(f"--only: unknown section(s) {sorted(only - set(sections))}; known: {', '.join(sections)}")
    if not torch.cuda.is_available() or not posenc.gpu_available():
        print("python_ops.py: no CUDA device or posenc built without GPU support:", posenc.gpu_unavailable_reason())
        return 0
    card = torch.cuda.get_device_name(0)
    tokens = [1, 64, 4096, 65536] if a.quick else [1, 8, 64, 256, 1024, 4096, 16384, 65536]
    rows = []
    if "overhead" in only:
        rows += overhead_rows(card)
    if "contract" in only:
        rows += contract_rows(card, tokens)
    if "model" in only:
        rows += model_rows(card)
    if "prologue" in only:
        try:
            rows += prologue_rows(card, [1, 64, 4096, 16384] if a.quick else [1, 8, 64, 256, 1024, 4096, 16384, 65536])
        except ImportError as e:  # transformers is needed for the HF chain
            print("python_ops.py: prologue rows skipped:", e)
    if "serving" in only:
        try:
            rows += serving_rows(card, [1, 64, 4096, 16384] if a.quick else [1, 8, 64, 256, 1024, 4096, 16384, 65536])
        except Exception as e:  # printed, and the other sections' tables still come out
            print("python_ops.py: serving rows failed:", repr(e))
    if "mla" in only:
        try:
            rows += mla_rows(card, [1, 64, 4096, 16384] if a.quick else [1, 8, 64, 256, 1024, 4096, 16384, 65536])
        except Exception as e:
            print("python_ops.py: mla rows failed:", repr(e))
    print(f"## posenc Python ops on {card} (torch {torch.__version__}, posenc {posenc.__version__})\n")
    if any(r["kind"] == "overhead" for r in rows):
        print("| op (T=1, bf16 Q[1,32,128] K[1,8,128]) | eager host us/call | graph-replayed device us/call |")
        print("|---|---|---|")
        for r in rows:
            if r["kind"] == "overhead":
                print(f"| {r['variant']} | {r['host_us']:.1f} | {r['graph_us']:.2f} |")
    timed_table(rows, "contract", "variant", "bit-identical to vLLM eager")
    timed_table(rows, "prologue", "Qwen3-8B prologue (q/k norm + RoPE), bf16", "fused = HF eager bit for bit")
    timed_table(rows, "serving", "Qwen3-8B fp8 serving prologue (q/k norm + RoPE + fp8 Q, K, V + paged cache)",
                "fused = unfused byte for byte")
    timed_table(rows, "mla", "DeepSeek-V3 MLA prologue (q_pe, k_pe RoPE + [c_kv | k_pe] into the paged latent cache)",
                "fused = unfused byte for byte")
    if any(r["kind"] == "model" for r in rows):
        print("\n| GLM-4-9B-shaped stack, 2 layers, bf16 | 4096-token prefill ms | decode step at 4096 us |")
        print("|---|---|---|")
        for r in rows:
            if r["kind"] == "model":
                print(f"| {r['variant']} | {r['prefill_ms']:.2f} | {r['decode_us']:.0f} |")
    if a.csv:
        keys = sorted({k for r in rows for k in r})
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
