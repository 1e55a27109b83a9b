"""Shared helpers: torchvision ResNet-50 <-> safetensors with torchvision state_dict names.

Imported by tools/parity/*.py and tools/bench/*.py (they put tools/ on sys.path).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

NBT_SUFFIX = ".num_batches_tracked"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_resnet50(weights: str | Path) -> torch.nn.Module:
    """Build torchvision.models.resnet50() and load `weights` strictly.

    The only tolerated difference is missing `*.num_batches_tracked` buffers
    (the Rust generator does not write them); they are filled with 0, which has
    no effect in eval mode. Every other missing/unexpected key or shape mismatch
    is an error (load_state_dict(strict=True)). Floating tensors must be float32.
    """
    model = torchvision.models.resnet50(weights=None)
    expected = model.state_dict()
    sd = load_file(str(weights), device="cpu")

    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad_missing = [k for k in missing if not k.endswith(NBT_SUFFIX)]
    if bad_missing or unexpected:
        raise SystemExit(
            f"{weights}: state_dict mismatch vs torchvision resnet50: "
            f"missing={bad_missing[:10]} ({len(bad_missing)}), "
            f"unexpected={unexpected[:10]} ({len(unexpected)})"
        )
    for k in missing:  # only *.num_batches_tracked here
        sd[k] = torch.zeros((), dtype=expected[k].dtype)
    for k, v in sd.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            raise SystemExit(f"{weights}: tensor {k} is {v.dtype}, expected float32")
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model


def save_resnet50(model: torch.nn.Module, out: str | Path, include_nbt: bool = False) -> int:
    from safetensors.torch import save_file

    sd = {
        k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous()
        for k, v in model.state_dict().items()
        if include_nbt or not k.endswith(NBT_SUFFIX)
    }
    save_file(sd, str(out), metadata={"format": "pt", "arch": "torchvision.resnet50"})
    return len(sd)
