"""The torch ops under torch.library.opcheck, torch.compile(fullgraph=True) and CUDA graph capture."""

from __future__ import annotations

import os
import re

import pytest

import posenc
from conftest import needs_cuda, needs_torch, torch

pytestmark = needs_torch


def _args(device, dtype=None):
    dtype = dtype or torch.bfloat16
    g = torch.Generator().manual_seed(0)
    spec = posenc.RopeSpec(head_dim=64, rotary_dim=32, pairing="interleaved", theta=1e4)
    q = torch.randn((5, 4, 64), generator=g).to(dtype).to(device)
    k = torch.randn((5, 2, 64), generator=g).to(dtype).to(device)
    v = torch.randn((5, 2, 64), generator=g).to(dtype).to(device)
    pos = torch.randint(0, 1000, (5,), generator=g).to(device)
    return spec, q, k, v, pos


def _cache(device):
    inv = 1.0 / (1e4 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32))
    f = torch.arange(1024, dtype=torch.float32)[:, None] * inv
    return torch.cat((f.cos(), f.sin()), dim=-1).to(device)


def test_opcheck_every_op(device):
    spec, q, k, v, pos = _args(device)
    ops = torch.ops.posenc
    torch.library.opcheck(ops.apply_rope_, (q.clone(), k.clone(), pos, spec.id))
    torch.library.opcheck(ops.apply_rope_, (q.clone(), None, pos, spec.id))
    torch.library.opcheck(ops.apply_rope, (q, k, pos, spec.id))
    slots = torch.tensor([3, 0, -1, 5, 1], device=device)
    kc = torch.zeros((2, 4, 2, 64), dtype=torch.bfloat16, device=device)
    torch.library.opcheck(ops.append_kv_, (q.clone(), k, v, pos, slots, kc, kc.clone(), spec.id, "paged_nhd", 1.0, 1.0,
                                            None, 1.0))
    # With q_out (fp8 serving): the op mutates q_out, not q. opcheck's schema test compares tensors
    # with ops torch lacks for float8 on the CPU ("mul_cpu_reduced_float"), so it is left out here;
    # test_append.py checks that q_out is written and q is not.
    kf = torch.zeros((2, 4, 2, 64), dtype=torch.float8_e4m3fn, device=device)
    q_out = torch.zeros((5, 4, 64), dtype=torch.float8_e4m3fn, device=device)
    torch.library.opcheck(ops.append_kv_, (q.clone(), k, v, pos, slots, kf, kf.clone(), spec.id, "paged_nhd", 0.5, 0.5,
                                            q_out, 0.25),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    qf = q.reshape(5, 4 * 64).clone()
    torch.library.opcheck(ops.rotary_embedding, (pos, qf, k.reshape(5, 128).clone(), 64, _cache(device), False))


def test_compile_fullgraph_matches_eager(device):
    spec, q, k, v, pos = _args(device)

    def step(q, k, v, pos, k_cache, v_cache, slots):
        q2, k2 = posenc.apply_rope(q * 2, k, pos, spec)
        posenc.apply_rope_(q, k, pos, spec)
        posenc.append_kv_(q2, k2, v, pos, slots, k_cache, v_cache, spec, layout="contiguous")
        return q + q2, k

    slots = torch.tensor([0, 1, 2, 3, 4], device=device)
    caches = [torch.zeros((1, 8, 2, 64), dtype=torch.bfloat16, device=device) for _ in range(4)]
    eager = step(q.clone(), k.clone(), v, pos, caches[0], caches[1], slots)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(q.clone(), k.clone(), v, pos, caches[2], caches[3], slots)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


def test_compile_contract_op(device):
    _, q, k, _, pos = _args(device)
    cache = _cache(device)

    def f(pos, q, k):
        posenc.rotary_embedding(pos, q, k, 64, cache, True)
        return q.sum() + k.sum()

    a, b = q.reshape(5, 256).clone(), k.reshape(5, 128).clone()
    want = f(pos, a, b)
    torch._dynamo.reset()
    c, d = q.reshape(5, 256).clone(), k.reshape(5, 128).clone()
    got = torch.compile(f, fullgraph=True)(pos, c, d)
    assert torch.equal(a, c) and torch.equal(b, d) and torch.equal(want, got)


@needs_cuda
def test_cuda_graph_capture_and_replay():
    spec, q, k, v, pos = _args("cuda")
    cache = _cache("cuda")
    kc = torch.zeros((1, 8, 2, 64), dtype=torch.bfloat16, device="cuda")
    vc = torch.zeros_like(kc)
    slots = torch.arange(5, device="cuda")
    qc = q.reshape(5, 256).clone()

    def body():
        posenc.apply_rope_(q, k, pos, spec)
        posenc.append_kv_(q, k, v, pos, slots, kc, vc, spec, layout="contiguous")
        posenc.rotary_embedding(pos, qc, None, 64, cache, True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body()  # warm-up: builds the engines (that uploads and synchronizes, so never inside capture)
    torch.cuda.current_stream().wait_stream(s)
    q0, k0, qc0 = q.clone(), k.clone(), qc.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    q.copy_(q0), k.copy_(k0), qc.copy_(qc0)
    graph.replay()
    torch.cuda.synchronize()
    posenc.check()
    q1, k1, qc1 = q.clone(), k.clone(), qc.clone()
    q.copy_(q0), k.copy_(k0), qc.copy_(qc0)
    body()
    torch.cuda.synchronize()
    assert torch.equal(q, q1) and torch.equal(k, k1) and torch.equal(qc, qc1)


@needs_cuda
def test_engine_built_inside_capture_is_refused():
    spec = posenc.RopeSpec(head_dim=64, theta=123.0)  # a fresh spec: no engine yet
    q = torch.randn((2, 2, 64), device="cuda")
    pos = torch.arange(2, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(Exception, match="inside CUDA graph capture"):
        with torch.cuda.graph(graph):
            posenc.apply_rope_(q, None, pos, spec)


@needs_cuda
def test_one_cuda_runtime_in_the_process():
    """The extension links the shared CUDA runtime: the process maps exactly one libcudart.so.N.

    Wheels repaired by auditwheel (torchvision, loaded by transformers) carry private copies under
    a hashed name in their `<package>.libs/` folder; those are theirs, not a second runtime that
    posenc brought in, and are not counted."""
    posenc.apply_rope_(torch.randn((1, 1, 64), device="cuda"), None, torch.zeros(1, dtype=torch.long, device="cuda"),
                       posenc.RopeSpec(head_dim=64))
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "libcudart" in line}
    shared = {p for p in libs if re.fullmatch(r"libcudart\.so(\.\d+)*", os.path.basename(p))}
    assert len(shared) == 1, libs


@needs_cuda
def test_current_stream_is_used():
    spec, q, k, _, pos = _args("cuda")
    want, _ = posenc.apply_rope(q, k, pos, spec)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = q.clone()
        posenc.apply_rope_(got, None, pos, spec)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, want)
