#!/usr/bin/env python3
"""Bit-exactness sweep: posenc's hf_compatible against transformers' own rotary module + apply_rotary_pos_emb, on one torch device, every position.

For every scheme x theta x rotary dim x dtype of the grid (hf_rotary.SCHEMES, THETAS, DIMS), it
rotates one Q and one K head at every position 0 .. 2^20 - 1 in increasing chunks (each chunk one
call, so dynamic NTK / LongRoPE switch tables as a growing context does), then once more below the
threshold (the table switched back), with transformers (LlamaRotaryEmbedding + apply_rotary_pos_emb
on the device) and with posenc (its Python package: the spec from the scheme's parameters, posenc's
own tables, the engine of the tensors' device with hf_arithmetic "engine"), and counts the values
whose bits differ. Results go to a JSON-lines file (one line per case, resumable) and a summary
table into docs/MODELS.md between the markers of the device.

    python3 scripts/golden/sweep_bitexact.py --device cpu                  # the whole grid (hours on 2 cores)
    python3 scripts/golden/sweep_bitexact.py --device cuda --jobs 4 --out build/sweep-cuda.jsonl
    python3 scripts/golden/sweep_bitexact.py --device cpu --stride 97 --schemes none,dynamic   # a subset

--stride S keeps every S-th position (plus the last 64 below 2^20 and the thresholds' neighbours);
--error also measures, in float32, how far transformers' output and posenc's `accurate` are from
float64 RoPE of the same table, per position range (docs/MODELS.md).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_rotary as hr  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHUNK = 1 << 16
RANGES = ((0, 4096), (4096, 65536), (65536, hr.TOP))


def posenc_spec(scheme: str, theta: float, dim: int, numerics: str = "hf_compatible"):
    import posenc
    p = hr.PARAMS[scheme]
    fields = dict(head_dim=dim, theta=theta, numerics=numerics, scaling="none" if scheme == "none" else scheme,
                  max_position_embeddings=p["max_position_embeddings"], position_limit=1 << 21)
    for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"):
        if key in p:
            fields[key] = p[key]
    if scheme == "longrope":
        fields["short_factor"], fields["long_factor"] = hr.longrope_factors(dim)
    return posenc.RopeSpec(**fields)


def positions_of(scheme: str, stride: int) -> list[np.ndarray]:
    """The calls: increasing chunks of 0 .. 2^20 - 1 (every `stride`-th, thresholds' neighbours and the
    top 64 kept), then a call below the threshold again for dynamic / LongRoPE."""
    t = hr.threshold(scheme)
    keep = np.arange(0, hr.TOP, stride, dtype=np.int64)
    extra = [np.arange(hr.TOP - 64, hr.TOP, dtype=np.int64)]
    if t is not None:
        extra.append(np.arange(max(t - 2, 0), t + 2, dtype=np.int64))
    pos = np.unique(np.concatenate([keep, *extra]))
    calls = [pos[(pos >= lo) & (pos < lo + CHUNK * stride)] for lo in range(0, hr.TOP, CHUNK * stride)]
    calls = [c for c in calls if c.size]
    if t is not None:  # a chunk ending exactly at the threshold, then past it: both sides of the switch
        calls.insert(0, pos[pos < t])
        # Below again after the far calls, strictly (seq_len < t): transformers' dynamic module only
        # returns to its init table then (it keeps its largest table otherwise; docs/NUMERICS.md §5.3).
        calls.append(pos[pos < t - 1])
    return calls


def bits(t: torch.Tensor) -> torch.Tensor:
    view = torch.int32 if t.dtype == torch.float32 else torch.int16
    return t.contiguous().view(view)


def run_case(scheme: str, theta: float, dim: int, dname: str, device: str, stride: int, error: bool) -> dict:
    import posenc
    dtype = hr.DTYPES[dname]
    spec = posenc_spec(scheme, theta, dim)
    accurate = posenc_spec(scheme, theta, dim, "accurate") if error else None
    module = hr.rotary_module(scheme, theta, dim, device)  # one module through the calls, as a model keeps it
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    # Inputs drawn on the device itself: a CPU generator would dominate a GPU sweep of every position.
    gen = torch.Generator(device=device).manual_seed(int.from_bytes(hashlib.sha256(f"{scheme}/{theta}/{dim}/{dname}".encode()).digest()[:4], "little"))
    values = differ = 0
    first_diff = None
    # Seconds per stage (device synchronised at each boundary), recorded so that a slow sweep says
    # where its time goes: inputs drawn, transformers' module + apply, posenc, the comparison.
    stages = {"inputs": 0.0, "transformers": 0.0, "posenc": 0.0, "compare": 0.0}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        sync()
        now = time.perf_counter()
        stages[stage] += now - clock
        clock = now

    start = clock
    err = {f"{lo}-{hi}": [0.0, 0.0] for lo, hi in RANGES}  # transformers, posenc accurate (max |err| / max |x|)
    for pos in positions_of(scheme, stride):
        n = pos.size
        q = torch.randn(n, 1, dim, generator=gen, device=device).to(dtype)
        k = torch.randn(n, 1, dim, generator=gen, device=device).to(dtype)
        p = torch.from_numpy(pos).to(device)
        lap("inputs")
        cos, sin = module(q.transpose(0, 1)[None], p[None])
        q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
        q_hf, k_hf = q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1)
        lap("transformers")
        q_pe, k_pe = posenc.apply_rope(q, k, p, spec)
        lap("posenc")
        for a, b in ((q_hf, q_pe), (k_hf, k_pe)):
            mask = bits(a) != bits(b)
            count = int(mask.sum())
            if count and first_diff is None:
                where = int(mask.nonzero()[0][0])
                first_diff = {"position": int(pos[where]), "transformers": float(a.reshape(n, -1)[where].float()[0]),
                              "posenc": float(b.reshape(n, -1)[where].float()[0])}
            differ += count
            values += a.numel()
        lap("compare")
        if error and dtype == torch.float32:
            # Each side against float64 RoPE of its own float32 table (the exact angle p * inv_freq,
            # float64 cos/sin, the attention factor in float64): transformers' table is the module's,
            # posenc accurate's the correctly rounded one.
            x = q.double().cpu()[:, 0]
            rot = torch.cat((-x[:, dim // 2:], x[:, :dim // 2]), -1)
            scale = x.abs().amax(-1)

            def rope64(inv, af):
                ang = torch.from_numpy(pos).double()[:, None] * torch.as_tensor(inv, dtype=torch.float64)[None, :]
                c, s = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
                return x * c * af + rot * s * af

            want_hf = rope64(module.inv_freq.detach().double().cpu(), float(module.attention_scaling))
            acc_inv, acc_af = accurate.frequencies(int(pos.max()) + 1)
            want_acc = rope64(acc_inv, acc_af)
            q_acc, _ = posenc.apply_rope(q, k, p, accurate)
            e_hf = ((q_hf.double().cpu()[:, 0] - want_hf).abs().amax(-1) / scale).numpy()
            e_acc = ((q_acc.double().cpu()[:, 0] - want_acc).abs().amax(-1) / scale).numpy()
            for lo, hi in RANGES:
                m = (pos >= lo) & (pos < hi)
                if m.any():
                    key = f"{lo}-{hi}"
                    err[key][0] = max(err[key][0], float(e_hf[m].max()))
                    err[key][1] = max(err[key][1], float(e_acc[m].max()))
    rec = {"scheme": scheme, "theta": theta, "dim": dim, "dtype": dname, "values": values, "differ": differ,
           "positions": int(sum(c.size for c in positions_of(scheme, stride))), "stride": stride}
    rec["seconds"] = round(time.perf_counter() - start, 2)
    rec["stage_seconds"] = {k: round(v, 2) for k, v in stages.items()}
    if first_diff:
        rec["first_diff"] = first_diff
    if error and dtype == torch.float32:
        rec["rel_error"] = err
    return rec


def hardware_of(records: list[dict], here: str) -> str:
    """The cards or CPUs the records ran on, with each one's number of (scheme, theta, dim) cases
    (records from before the field existed: `here`)."""
    cases: dict[str, set] = {}
    for r in records:
        cases.setdefault(r.get("hardware", here), set()).add((r["scheme"], r["theta"], r["dim"]))
    if len(cases) == 1:
        return next(iter(cases))
    return "; ".join(f"{name}: {len(c)} cases" for name, c in cases.items())


def ordinal(n: int) -> str:
    """61 -> '61st', 12 -> '12th': the stride in the table's heading."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def summary(records: list[dict], device: str, meta: dict) -> str:
    lines = [f"<!-- sweep:{device}:begin (scripts/golden/sweep_bitexact.py writes this block) -->",
             f"Device **{device}** ({hardware_of(records, meta['hardware'])}), transformers {meta['transformers']}, torch {meta['torch']}"
             f"{', CPU capability ' + meta['cpu_capability'] if device == 'cpu' else ''}, posenc "
             f"hf_compatible with hf_arithmetic `engine`; {meta['date']}. Positions: "
             f"{'every position' if meta['stride'] == 1 else 'every ' + ordinal(meta['stride']) + ' position'} "
             f"0 .. 2^20 − 1 plus the top 64 and the thresholds' neighbours, in 65536-position calls, then "
             f"below the threshold again (dynamic, longrope).", "",
             "| scheme | thetas | rotary dims | cases | bf16 differing / values | fp16 differing / values | fp32 differing / values |",
             "|---|---|---|---|---|---|---|"]
    for scheme in hr.SCHEMES:
        rows = [r for r in records if r["scheme"] == scheme]
        if not rows:
            continue
        cells = []
        for dname in hr.DTYPES:
            d = [r for r in rows if r["dtype"] == dname]
            cells.append(f"{sum(r['differ'] for r in d)} / {sum(r['values'] for r in d):,}" if d else "not run")
        thetas = sorted({r["theta"] for r in rows})
        dims = sorted({r["dim"] for r in rows})
        lines.append(f"| {scheme} | {', '.join(f'{t:g}' for t in thetas)} | {', '.join(map(str, dims))} | "
                     f"{len({(r['theta'], r['dim']) for r in rows})} | " + " | ".join(cells) + " |")
    total = sum(r["differ"] for r in records)
    lines += ["", f"Total: **{total} differing values** of {sum(r['values'] for r in records):,} compared.",
              f"<!-- sweep:{device}:end -->"]
    return "\n".join(lines)


def write_models_md(block: str, device: str) -> None:
    path = REPO / "docs" / "MODELS.md"
    text = path.read_text()
    begin = f"<!-- sweep:{device}:begin"
    end = f"<!-- sweep:{device}:end -->"
    if begin in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--stride", type=int, default=1, help="keep every S-th position (default 1: all)")
    ap.add_argument("--schemes", default=",".join(hr.SCHEMES))
    ap.add_argument("--thetas", default=",".join(f"{t:g}" for t in hr.THETAS))
    ap.add_argument("--dims", default=",".join(map(str, hr.DIMS)))
    ap.add_argument("--dtypes", default=",".join(hr.DTYPES))
    ap.add_argument("--error", action="store_true", help="also measure float32 errors against float64 RoPE")
    ap.add_argument("--out", default="", help="JSON lines, appended and resumed (default build/sweep-<device>.jsonl)")
    ap.add_argument("--no-docs", action="store_true", help="do not write the summary into docs/MODELS.md")
    ap.add_argument("--jobs", type=int, default=1,
                    help="(scheme, theta) child processes at once (default 1); each appends its own lines")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out or REPO / "build" / f"sweep-{args.device}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["scheme"], r["theta"], r["dim"], r["dtype"], r["stride"])] = r
    # (without a GPU, as when only summarising finished CUDA records, the records name their card)
    hardware = (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU here") if args.device == "cuda" \
        else (platform.processor() or "x86-64")
    if args.device == "cpu":
        try:
            hardware = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "hardware": hardware,
            "date": datetime.date.today().isoformat(), "stride": args.stride}
    if not args.in_process:
        # One child process per (scheme, theta): posenc keeps every spec (and the CPU engine's row
        # cache, up to 32 MB once long positions are used) for the life of the process, so a whole
        # grid in one process would grow to tens of GB. --jobs runs several at once (a GPU sweep
        # leaves the GPU mostly idle in each); every record is one appended line, written whole.
        groups = []
        for scheme in args.schemes.split(","):
            for theta in args.thetas.split(","):
                missing = [(d, n) for d in args.dims.split(",") for n in args.dtypes.split(",")
                           if (scheme, float(theta), int(d), n, args.stride) not in done]
                if missing:
                    groups.append((scheme, theta, len(missing)))

        def child(group):
            scheme, theta, count = group
            began = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--in-process", "--no-docs", "--device", args.device,
                            "--stride", str(args.stride), "--schemes", scheme, "--thetas", theta,
                            "--dims", args.dims, "--dtypes", args.dtypes, "--out", str(out)]
                           + (["--error"] if args.error else []), check=True)
            # (against the records' own seconds: what the process's start, imports and engine
            # set-up cost)
            print(f"child {scheme} theta {theta}: {time.perf_counter() - began:.1f} s for {count} records", flush=True)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for future in [pool.submit(child, g) for g in groups]:
                future.result()
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["scheme"], r["theta"], r["dim"], r["dtype"], r["stride"])] = r
    records = []
    with out.open("a") as f:
        for scheme in args.schemes.split(","):
            for theta in (float(t) for t in args.thetas.split(",")):
                for dim in (int(d) for d in args.dims.split(",")):
                    for dname in args.dtypes.split(","):
                        key = (scheme, theta, dim, dname, args.stride)
                        rec = done.get(key)
                        if rec is None or (args.error and "rel_error" not in rec and dname == "float32"):
                            rec = run_case(scheme, theta, dim, dname, args.device, args.stride, args.error)
                            rec["hardware"] = hardware
                            f.write(json.dumps(rec) + "\n")
                            f.flush()
                        records.append(rec)
                        flag = "" if rec["differ"] == 0 else f"  <-- {rec['differ']} differ, first {rec.get('first_diff')}"
                        took = f" ({rec['seconds']} s: {rec['stage_seconds']})" if "seconds" in rec else ""
                        print(f"{scheme:8} theta {theta:<8g} dim {dim:3} {dname:8}: {rec['values']:>11,} values{flag}{took}",
                              flush=True)
    block = summary(records, args.device, meta)
    print(block)
    if not args.no_docs:
        write_models_md(block, args.device)
    return 1 if any(r["differ"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
