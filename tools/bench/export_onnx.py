#!/usr/bin/env python3
"""Export torchvision ResNet-50 (weights from a torchvision-named safetensors) to ONNX.

Input "input" float32 [N,3,224,224] (N dynamic), output "logits" [N,1000], opset 17.

Usage:
  python tools/bench/export_onnx.py --weights W.safetensors --out /tmp/resnet50.onnx [--check]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/

import numpy as np
import torch

from resnet_st import load_resnet50


def export(model: torch.nn.Module, out: str | Path, opset: int = 17) -> None:
    dummy = torch.randn(2, 3, 224, 224)
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        do_constant_folding=True,
    )
    import warnings
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    try:
        # TorchScript-based exporter: needs no extra packages (onnxscript) and
        # honours dynamic_axes directly.
        torch.onnx.export(model, (dummy,), str(out), dynamo=False, **kwargs)
    except TypeError:  # old torch without the dynamo kwarg
        torch.onnx.export(model, (dummy,), str(out), **kwargs)


def check(model: torch.nn.Module, path: str | Path, threads: int) -> float:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        x = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            ref = model(x).numpy()
        got = sess.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == (n, 1000), got.shape
        d = float(np.abs(got - ref).max())
        print(f"check batch={n}: max|onnxruntime - torch| = {d:.3e} (max|logit| {np.abs(ref).max():.3g})")
        worst = max(worst, d)
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--check", action="store_true", help="onnx.checker + compare with torch at batch 1 and 3")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_resnet50(args.weights)
    export(model, args.out, args.opset)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, opset {args.opset}, dynamic batch)")
    if args.check:
        check(model, args.out, args.threads)


if __name__ == "__main__":
    main()
