#!/usr/bin/env python3
"""Generate the PyTorch reference fixture for the Rust ResNet-50 parity test.

Usage:
  python tools/parity/make_fixture.py --weights W.safetensors \
      --images DIR_OR_FILES... --out inference/tests/fixtures/parity.json
  python tools/parity/make_fixture.py --weights W.safetensors --images DIR --perturb

Model: torchvision.models.resnet50() + load_state_dict(strict=True) from a
safetensors file with torchvision names (missing *.num_batches_tracked are
filled in), eval mode, float32, 2 threads, deterministic algorithms.

Preprocessing is EXACTLY the seed Flask app's:
  Image.open(path).convert("RGB")
  Compose([Resize(256), CenterCrop(224), ToTensor(),
           Normalize(mean=[0.485,0.456,0.406], std=[0.229,0.224,0.225])])

--perturb prints (does not store) how much the logits move under small
preprocessing changes, to justify the Rust test's tolerances.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as transforms
import torchvision.transforms.functional as TF
from PIL import Image

from resnet_st import load_resnet50, sha256_file

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# The seed app's preprocessing, verbatim.
PREPROCESS = transforms.Compose([
    transforms.Resize(256),
    transforms.CenterCrop(224),
    transforms.ToTensor(),
    transforms.Normalize(mean=MEAN, std=STD),
])
PREPROCESS_DESC = (
    'Image.open(p).convert("RGB"); Resize(256) [bilinear, PIL antialias]; CenterCrop(224); '
    "ToTensor(); Normalize(mean=[0.485,0.456,0.406], std=[0.229,0.224,0.225])"
)


def sample_positions() -> list[list[int]]:
    """32 fixed (c, y, x) positions: corners, centre, crop edges, then pseudo-random."""
    fixed = [
        (0, 0, 0), (1, 0, 223), (2, 223, 0), (0, 223, 223),
        (1, 112, 112), (2, 111, 112), (0, 112, 111), (1, 0, 112),
        (2, 112, 0), (0, 223, 112), (1, 112, 223), (2, 1, 1),
    ]
    rng = np.random.RandomState(20240601)  # fixed forever: positions are also in the JSON
    out = [list(p) for p in fixed]
    while len(out) < 32:
        p = [int(rng.randint(3)), int(rng.randint(224)), int(rng.randint(224))]
        if p not in out:
            out.append(p)
    return out


def sig6(v: float) -> float:
    return float(f"{v:.6g}")


def collect_images(args_images: list[str]) -> list[Path]:
    paths: list[Path] = []
    for a in args_images:
        p = Path(a)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            paths.append(p)
        else:
            raise SystemExit(f"not a file or directory: {a}")
    names = [p.name for p in paths]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise SystemExit(f"duplicate image basenames (fixture keys on basename): {sorted(dups)}")
    if not paths:
        raise SystemExit("no images found")
    return paths


def top5(logits: torch.Tensor) -> list[int]:
    # Stable ordering: larger logit first, ties broken by smaller class id.
    vals = logits.tolist()
    return sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:5]


@torch.inference_mode()
def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.unsqueeze(0))[0]


# ---------------------------------------------------------------- perturbation

def manual_preprocess(img: Image.Image, interp=transforms.InterpolationMode.BILINEAR,
                      dy: int = 0, dx: int = 0, lsb_noise_seed: int | None = None) -> torch.Tensor:
    """Same as PREPROCESS, but with knobs. With defaults it must equal PREPROCESS exactly."""
    r = TF.resize(img, 256, interpolation=interp)
    w, h = r.size
    top = int(round((h - 224) / 2.0)) + dy
    left = int(round((w - 224) / 2.0)) + dx
    top = min(max(top, 0), h - 224)
    left = min(max(left, 0), w - 224)
    c = TF.crop(r, top, left, 224, 224)
    if lsb_noise_seed is not None:
        a = np.asarray(c, dtype=np.int16)
        rng = np.random.default_rng(lsb_noise_seed)
        a = np.clip(a + rng.integers(-1, 2, size=a.shape), 0, 255).astype(np.uint8)
        c = Image.fromarray(a, "RGB")
    return TF.normalize(TF.to_tensor(c), MEAN, STD)


def run_perturb(model: torch.nn.Module, paths: list[Path]) -> None:
    model64 = None
    print("# --perturb: max|dlogit| vs the reference (seed preprocessing, float32); "
          "top5: '=' same ids+order, 'o' same set/other order, 'X' set changed")
    hdr = f"{'image':22s} {'max|logit|':>10s} {'gap5-6':>7s}"
    kinds = ["bicubic", "crop dx+1", "crop dy+1", "uint8 +-1", "fp64 model"]
    for k in kinds:
        hdr += f" {k:>13s}"
    print(hdr)
    worst = {k: 0.0 for k in kinds}
    for p in paths:
        img = Image.open(p).convert("RGB")
        x = PREPROCESS(img)
        x2 = manual_preprocess(img)
        assert torch.equal(x, x2), "manual_preprocess diverged from the seed Compose"
        ref = forward(model, x)
        t_ref = top5(ref)
        srt = torch.sort(ref, descending=True).values
        gap = float(srt[4] - srt[5])
        variants = {
            "bicubic": forward(model, manual_preprocess(img, transforms.InterpolationMode.BICUBIC)),
            "crop dx+1": forward(model, manual_preprocess(img, dx=1)),
            "crop dy+1": forward(model, manual_preprocess(img, dy=1)),
            "uint8 +-1": forward(model, manual_preprocess(img, lsb_noise_seed=0)),
        }
        if model64 is None:
            import copy
            model64 = copy.deepcopy(model).double()
        variants["fp64 model"] = forward(model64, x.double()).float()
        line = f"{p.name[:22]:22s} {float(ref.abs().max()):10.4f} {gap:7.4f}"
        for k in kinds:
            v = variants[k]
            d = float((v - ref).abs().max())
            worst[k] = max(worst[k], d)
            t = top5(v)
            flag = "=" if t == t_ref else ("o" if set(t) == set(t_ref) else "X")
            line += f" {d:11.3e} {flag}"
        print(line)
    print("# worst: " + ", ".join(f"{k}={v:.3e}" for k, v in worst.items()))


# ---------------------------------------------------------------- main

def dump_json(doc: dict) -> str:
    """Indented JSON, but with every list of plain numbers on one line (keeps the diff/file small)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda m: "[" + ",".join(t.strip() for t in m.group(1).split(",")) + "]", text) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="torchvision-named resnet50 .safetensors")
    ap.add_argument("--images", required=True, nargs="+", help="image files and/or directories")
    ap.add_argument("--out", help="output JSON (e.g. inference/tests/fixtures/parity.json)")
    ap.add_argument("--perturb", action="store_true", help="print logit sensitivity to preprocessing changes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.out and not args.perturb:
        ap.error("nothing to do: give --out and/or --perturb")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)

    model = load_resnet50(args.weights)
    paths = collect_images(args.images)

    if args.out:
        positions = sample_positions()
        images = []
        for p in paths:
            raw = p.read_bytes()
            src = Image.open(p)
            src_info = {"width": src.width, "height": src.height, "mode": src.mode}
            img = Image.open(p).convert("RGB")
            x = PREPROCESS(img)
            assert x.shape == (3, 224, 224) and x.dtype == torch.float32
            logits = forward(model, x)
            assert torch.isfinite(logits).all(), f"{p}: non-finite logits"
            srt = torch.sort(logits, descending=True).values
            x64 = x.double()
            images.append({
                "file": p.name,
                "sha256": hashlib.sha256(raw).hexdigest(),
                "source": src_info,
                "logits": [sig6(v) for v in logits.tolist()],
                "top5": top5(logits),
                "max_abs_logit": sig6(float(logits.abs().max())),
                "logit_std": sig6(float(logits.double().std())),
                "top5_gap": sig6(float(srt[4] - srt[5])),  # logit[5th] - logit[6th]
                "input_stats": {
                    "sum": float(x64.sum()),
                    "channel_mean": [float(v) for v in x64.mean(dim=(1, 2))],
                    "sample": [float(x[c, y, xx]) for c, y, xx in positions],
                },
            })
            print(f"{p.name}: top5={images[-1]['top5']} max|logit|={images[-1]['max_abs_logit']} "
                  f"std={images[-1]['logit_std']} gap5-6={images[-1]['top5_gap']}", file=sys.stderr)
        doc = {
            "generator": {
                "script": "tools/parity/make_fixture.py",
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "pillow": PIL.__version__,
                "numpy": np.__version__,
                "threads": args.threads,
                "dtype": "float32",
            },
            "preprocess": PREPROCESS_DESC,
            "weights": {"file": Path(args.weights).name, "sha256": sha256_file(args.weights)},
            "logits_rounding": "6 significant digits",
            "input_stats_doc": "sum and channel_mean are float64 over the normalized 3x224x224 "
                               "tensor; sample[i] = tensor[c,y,x] at sample_positions[i] (CHW)",
            "sample_positions": positions,
            "images": images,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dump_json(doc))
        print(f"wrote {out} ({out.stat().st_size} bytes, {len(images)} images)", file=sys.stderr)
        tops = {tuple(i["top5"]) for i in images}
        if len(images) > 1 and len(tops) == 1:
            print("WARNING: all images have the same top-5 (degenerate weights?)", file=sys.stderr)

    if args.perturb:
        run_perturb(model, paths)


if __name__ == "__main__":
    main()
