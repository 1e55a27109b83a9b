#!/usr/bin/env python3
"""Checks examples/eksctl/cluster.yaml offline: against eksctl's own JSON schema (a copy of
pkg/apis/eksctl.io/v1alpha5/assets/schema.json from the eksctl Go module, version in its file
name), then what this project needs from the cluster (a tainted GPU group, a spot group, an
on-demand group, OIDC, metrics-server). `--self-test` (also run by default) breaks the file in
memory in ways that must be caught, so the checks are shown to fail when they should.

    python3 tools/validate_eksctl_example.py [--cluster FILE] [--schema FILE]
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
EKSCTL = ROOT / "examples" / "eksctl"


def schema_errors(config, schema):
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]


def project_errors(config):
    errors = []
    groups = config.get("managedNodeGroups") or []
    by_workload = {}
    for g in groups:
        by_workload.setdefault((g.get("labels") or {}).get("workload"), []).append(g)
        if g.get("minSize", 0) > g.get("maxSize", 0):
            errors.append(f"{g['name']}: minSize above maxSize")
        desired = g.get("desiredCapacity")
        if desired is not None and not g.get("minSize", 0) <= desired <= g.get("maxSize", 0):
            errors.append(f"{g['name']}: desiredCapacity outside minSize..maxSize")

    gpu = by_workload.get("inference-gpu", [])
    if not gpu:
        errors.append("no node group labelled workload=inference-gpu (examples/resnet50-gpu.yaml)")
    for g in gpu:
        taints = g.get("taints") or []
        if not any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule" for t in taints):
            errors.append(f"{g['name']}: the GPU group needs the nvidia.com/gpu NoSchedule taint")
        if g.get("spot"):
            errors.append(f"{g['name']}: the GPU group is spot; the example expects on-demand GPUs")
    cpu = by_workload.get("inference-cpu", [])
    if not any(g.get("spot") is True for g in cpu):
        errors.append("no spot CPU group (spot: true, workload=inference-cpu)")
    for g in cpu:
        if g.get("spot") and len(g.get("instanceTypes") or []) < 2:
            errors.append(f"{g['name']}: a spot group needs several instance types")
        if any(t.get("key") == "nvidia.com/gpu" for t in g.get("taints") or []):
            errors.append(f"{g['name']}: a CPU group carries the GPU taint")
    if not any(not g.get("spot") for g in cpu):
        errors.append("no on-demand CPU group (the base examples/resnet50-spot.yaml keeps)")

    if not (config.get("iam") or {}).get("withOIDC"):
        errors.append("iam.withOIDC must be true (IAM roles for service accounts)")
    addons = {a.get("name") for a in config.get("addons") or []}
    if "metrics-server" not in addons:
        errors.append("addons: metrics-server is missing (EKS does not install it; the HPA needs it)")
    return errors


def check(config, schema):
    # The project's checks read the types the schema promises: only once it holds.
    return schema_errors(config, schema) or project_errors(config)


def mutations():
    """(what, function that breaks a config in place); each must be reported."""

    def gpu(c):
        return next(g for g in c["managedNodeGroups"] if g["labels"]["workload"] == "inference-gpu")

    def spot(c):
        return next(g for g in c["managedNodeGroups"] if g.get("spot"))

    return [
        ("unknown top-level key", lambda c: c.update(nodeGroupz=[])),
        ("minSize as a string", lambda c: spot(c).update(minSize="0")),
        ("unknown node group key", lambda c: spot(c).update(instanceType_s=["c6i.large"])),
        ("no cluster region", lambda c: c["metadata"].pop("region")),
        ("bad log type", lambda c: c["cloudWatch"]["clusterLogging"].update(enableTypes=["api", "kubelet"])),
        ("GPU taint removed", lambda c: gpu(c).pop("taints")),
        ("GPU taint PreferNoSchedule", lambda c: gpu(c)["taints"][0].update(effect="PreferNoSchedule")),
        ("spot group made on-demand", lambda c: spot(c).update(spot=False)),
        ("spot group with one type", lambda c: spot(c).update(instanceTypes=["c6i.2xlarge"])),
        ("OIDC off", lambda c: c["iam"].update(withOIDC=False)),
        ("metrics-server dropped", lambda c: c.update(addons=[a for a in c["addons"] if a["name"] != "metrics-server"])),
        ("unknown AMI family", lambda c: gpu(c).update(amiFamily="AmazonLinux2025")),
        ("desired above max", lambda c: gpu(c).update(desiredCapacity=9)),
    ]


def self_test(config, schema):
    missed = []
    for what, mutate in mutations():
        broken = copy.deepcopy(config)
        mutate(broken)
        errors = check(broken, schema)
        print(f"  self-test {what}: {'caught: ' + errors[0] if errors else 'MISSED'}")
        if not errors:
            missed.append(what)
    return missed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", type=Path, default=EKSCTL / "cluster.yaml")
    ap.add_argument("--schema", type=Path, default=None, help="default: the schema-v*.json next to it")
    ap.add_argument("--no-self-test", action="store_true")
    args = ap.parse_args()
    schema_path = args.schema
    if schema_path is None:
        found = sorted(args.cluster.parent.glob("schema-v*.json"))
        if len(found) != 1:
            sys.exit(f"expected one schema-v*.json beside {args.cluster}, found {len(found)}")
        schema_path = found[0]
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load(args.cluster.read_text())

    errors = check(config, schema)
    print(f"{args.cluster.relative_to(ROOT)} against {schema_path.name}: "
          f"{'ok' if not errors else f'{len(errors)} error(s)'}")
    for e in errors:
        print(f"  {e}")
    missed = [] if args.no_self_test else self_test(config, schema)
    if missed:
        print(f"self-test: {len(missed)} broken config(s) passed: {', '.join(missed)}")
    if errors or missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
