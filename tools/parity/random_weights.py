#!/usr/bin/env python3
"""Write random ResNet-50 weights (torchvision state_dict names, float32 safetensors).

For testing tools/parity/make_fixture.py and the benchmarks without the real
weights. Like the Rust generator, num_batches_tracked is NOT written (use
--with-nbt to include it).

Init (torchvision-like, but with non-trivial BN so eval-mode BN actually does something):
  conv:  kaiming_normal_(mode="fan_out", nonlinearity="relu")
  bn:    weight = 1 + 0.05*N(0,1), bias = 0.05*N(0,1),
         running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5)
  fc:    weight ~ N(0, 1/sqrt(2048)), bias = 0, then rescaled so the logits of the
         calibration inputs have a per-image std of --logit-std.
  --center-fc additionally sets fc.bias = -W @ mean(features over calibration inputs),
         which removes the image-independent logit component that otherwise makes
         every image share the same top-5.

Usage:
  python tools/parity/random_weights.py --out /tmp/rand.safetensors [--seed 0]
      [--logit-std 4] [--center-fc] [--calib-images DIR_OR_FILES...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from resnet_st import save_resnet50, sha256_file


def calib_inputs(args, gen: torch.Generator) -> torch.Tensor:
    if args.calib_images:
        from make_fixture import PREPROCESS, collect_images  # same dir
        from PIL import Image
        paths = collect_images(args.calib_images)
        return torch.stack([PREPROCESS(Image.open(p).convert("RGB")) for p in paths])
    # Smooth synthetic "images": low-res noise upsampled, roughly ImageNet-normalized range.
    low = torch.rand(8, 3, 14, 14, generator=gen)
    img = F.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img - mean) / std


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-std", type=float, default=4.0,
                    help="target per-image std of the logits over the 1000 classes")
    ap.add_argument("--center-fc", action="store_true",
                    help="fc.bias = -W @ mean calibration feature (de-degenerates top-5)")
    ap.add_argument("--calib-images", nargs="+", help="calibrate on these images (default: synthetic)")
    ap.add_argument("--with-nbt", action="store_true", help="also write *.num_batches_tracked")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)

    model = torchvision.models.resnet50(weights=None)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(1 + 0.05 * torch.randn(n))
            m.bias.copy_(0.05 * torch.randn(n))
            m.running_mean.copy_(0.1 * torch.randn(n))
            m.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5))
    nn.init.normal_(model.fc.weight, 0.0, 2048 ** -0.5)
    nn.init.zeros_(model.fc.bias)
    model.eval()

    x = calib_inputs(args, gen)
    fc = model.fc
    model.fc = nn.Identity()
    feats = model(x)  # (N, 2048) pooled features
    model.fc = fc
    if args.center_fc:
        fc.bias.copy_(-(fc.weight @ feats.mean(0)))
    logits = model(x)
    cur = logits.std(dim=1).mean()
    scale = float(args.logit_std / cur)
    fc.weight.mul_(scale)
    fc.bias.mul_(scale)
    logits = model(x)

    n = save_resnet50(model, args.out, include_nbt=args.with_nbt)
    tops = [tuple(t) for t in logits.topk(5, dim=1).indices.tolist()]
    fm = feats.mean(0)
    print(f"wrote {args.out}: {n} tensors, sha256={sha256_file(args.out)}")
    print(f"calib: {x.shape[0]} inputs; pooled features mean={float(feats.mean()):.4g} "
          f"between-input std/mean={float(feats.std(0).mean() / fm.abs().mean()):.3g}; "
          f"fc scale x{scale:.4g}")
    print(f"calib logits: per-image std={float(logits.std(1).mean()):.3g} "
          f"max|logit|={float(logits.abs().max()):.3g} "
          f"top5 distinct across inputs: {len(set(tops))}/{len(tops)}")


if __name__ == "__main__":
    main()
