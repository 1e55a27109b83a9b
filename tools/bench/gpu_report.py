#!/usr/bin/env python3
"""The GPU benchmark's tables and goal checks (tools/bench/gpu.sh writes the inputs).

Forward: img/s per backend and batch (bench_forward.rs and torch_gpu_forward.py lines), each
ours-vs-PyTorch-eager ratio, and the accuracy of every cuDNN variant against the f32 network.
HTTP: gpu_server.py's "gpu-server" lines, the new engine against the candle baseline from the
same run. Preprocessing: images/s by thread count. Then issue 20's goals, checked on these
figures. Only the standard library.

Usage: python tools/bench/gpu_report.py OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import read  # noqa: E402  (JSON lines, anything else skipped)


def rows(path: Path) -> list[dict]:
    """The JSON objects of `path`; none when a phase did not run."""
    return read([str(path)]) if path.exists() else []


def main() -> None:
    out = Path(sys.argv[1])
    fwd = rows(out / "forward-ours.jsonl") + rows(out / "forward-torch.jsonl")
    errors = [r for r in fwd if "error" in r]
    fwd = [r for r in fwd if "images_per_s" in r]
    batches = sorted({r["batch"] for r in fwd})
    backends = list(dict.fromkeys(r["backend"] for r in fwd))
    ips = {(r["backend"], r["batch"]): r["images_per_s"] for r in fwd}
    goals = []
    if fwd:
        print("Forward only, img/s (median of the timed runs; input already on the GPU)")
        print("| backend | " + " | ".join(f"batch {b}" for b in batches) + " |")
        print("|---|" + "---:|" * len(batches))
        for be in backends:
            cells = []
            for b in batches:
                v = ips.get((be, b))
                t = ips.get(("torch-eager", b))
                cell = "-" if v is None else f"{v:.0f}"
                if v is not None and t and be != "torch-eager":
                    cell += f" ({v / t:.2f}x)"
                cells.append(cell)
            print(f"| {be} | " + " | ".join(cells) + " |")
        print("(x: against PyTorch eager fp16 channels_last at the same batch)\n")
        acc = [r for r in fwd if "rel_err_vs_f32" in r]
        if acc:
            print("| cuDNN variant | batch | rel. L2 error vs f32 | top-1 agree | graph | plans s |")
            print("|---|---:|---:|---:|---|---:|")
            for r in acc:
                print(f"| {r['backend']} | {r['batch']} | {r['rel_err_vs_f32']:.2e} | "
                      f"{r['top1_agree']} | {r['graph']} | {r['plans_s']} |")
            print()
        for b in batches:
            o, t, c = ips.get(("ours", b)), ips.get(("torch-eager", b)), ips.get(("torch-compile", b))
            if o and t:
                goals.append((f"forward batch {b}: ours {o:.0f} >= PyTorch eager {t:.0f}", o >= t))
            if o and c:
                goals.append((f"forward batch {b}: ours {o:.0f} vs torch.compile {c:.0f} (aim)", o >= c))
    for e in errors:
        print(f"(peer failed: {e['backend']} batch {e.get('batch')}: {e['error']})")

    http = [r for r in rows(out / "http.jsonl") if r.get("kind") == "gpu-server"]
    by_label = {r["label"]: r for r in http}
    for r in http:
        print(f"HTTP [{r['label']}] {r['implementation']}, parity {'ok' if r['parity_ok'] else 'FAILED'}, "
              f"ready in {r['ready_s']} s")
        print("| photos | conc | img/s | p50 ms | p99 ms | non-200 | GPU util % | server CPU ms/img |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for h in r["http"]:
            bad = sum(v for k, v in h["statuses"].items() if k != "200") + h["io_errors"]
            print(f"| {h.get('set', 'mixed')} | {h['conc']} | {h['images_per_s']:.0f} | {h['p50_ms']:.1f} | {h['p99_ms']:.1f} "
                  f"| {bad} | {h['gpu_util_pct']} | {h['server_cpu_ms_per_image']} |")
        print()
    new, old = by_label.get("cudnn"), by_label.get("candle-baseline")
    if new:
        goals.append(("HTTP parity (top-5 = torchvision's, f16 tolerance)", new["parity_ok"]))
        sets = list(dict.fromkeys(h.get("set", "mixed") for h in new["http"]))
        for name in sets:
            at = {h["conc"]: h for h in new["http"] if h.get("set", "mixed") == name}
            if 32 in at:
                goals.append((f"HTTP p99 at 32 connections, {name}: {at[32]['p99_ms']:.1f} ms < 50 ms",
                              at[32]["p99_ms"] < 50))
            base = {h["conc"]: h for h in (old or {}).get("http", []) if h.get("set", "mixed") == name}
            if 64 in at and 64 in base:
                ratio = at[64]["images_per_s"] / max(base[64]["images_per_s"], 1e-9)
                goals.append((f"HTTP at 64 connections, {name}: {at[64]['images_per_s']:.0f} img/s vs "
                              f"candle {base[64]['images_per_s']:.0f} in this run = {ratio:.2f}x (goal 3x)",
                              ratio >= 3))

    pre = [r for r in rows(out / "preprocess.jsonl") if r.get("kind") == "preprocess_scaling"]
    if pre:
        print("Preprocessing (decode + resize + normalise) over the JPEGs in turn, all threads busy")
        print("| JPEG decode | threads | img/s | vs 1 thread |\n|---|---:|---:|---:|")
        one = {}
        for r in pre:
            side = r.get("jpeg_min_side", 0)
            mode = f"DCT-scaled (min side {side})" if side else "full size (PIL pixels)"
            one.setdefault(side, r["images_per_s"])
            print(f"| {mode} | {r['threads']} | {r['images_per_s']:.0f} | "
                  f"{r['images_per_s'] / one[side]:.1f}x |")
        print()
    if goals:
        print("Goals (issue 20), on this run's figures:")
        for text, ok in goals:
            print(f"  [{'x' if ok else ' '}] {text}")


if __name__ == "__main__":
    main()
