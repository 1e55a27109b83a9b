#!/usr/bin/env python3
"""Offline checks of the ECS examples (examples/ecs/): no AWS account needed.

Each JSON file there is the input of one AWS API call (alarms.json: a list of them;
dashboard-body.json and ecr-lifecycle-policy.json are documents the call carries as a string).
For each file this script:

1. fills the ${VAR} placeholders with realistic sample values, failing on any placeholder that
   is not in deploy.sh's TEMPLATE_VARS list;
2. validates the call with botocore's ParamValidator against the operation's input shape
   (types, unknown keys, missing required keys);
3. walks the shape tree itself and checks every string against the shape's enum, which
   ParamValidator does not do (launchType "BANANA" passes it);
4. checks this project's rules: Fargate without GPUs, the Spot strategy, the rolling-update
   limits, the probe health check, the server as 65532 (fetch-model as 0 without capabilities)
   and a read-only root everywhere, the drain fitting
   stopTimeout, fetch-model before the server, the scaling targets, the alarm topic, the
   dashboard's and alarms' metrics against CloudWatch's catalogue, and the files agreeing with
   each other and with deploy.sh.

Then, where the tools are here, deploy.sh's own rendering (envsubst) must give the same JSON,
and the aws CLI must accept each rendered file as it is passed in deploy.sh (sent to a closed
port, so nothing leaves the machine: a connection error means the parameters were accepted).

Last, a self-test applies mutations (cpu as an int, an unknown key, launchType "BANANA", a GPU
on Fargate, a CMD-SHELL curl health check, weight 3 on Spot, a stray placeholder, ...) one at a
time to in-memory copies and requires each to be reported by the check meant to catch it.

    python3 tools/validate_ecs_examples.py [--examples DIR] [--self-test | --no-self-test]
                                           [--no-cli]

Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore.session
from botocore.validate import ParamValidator

REPO = Path(__file__).resolve().parent.parent

# Realistic values for every documented placeholder (deploy.sh's TEMPLATE_VARS).
SAMPLE = {
    "ACCOUNT_ID": "123456789012",
    "REGION": "eu-west-1",
    "IMAGE_TAG": "0.1.0",
    "CLUSTER": "inference",
    "SUBNET_1": "subnet-0a1b2c3d4e5f60001",
    "SUBNET_2": "subnet-0a1b2c3d4e5f60002",
    "APP_SG": "sg-0a1b2c3d4e5f60003",
    "TG_ARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
    "targetgroup/inference-server-blue/0123456789abcdef",
    "TG_GREEN_ARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
    "targetgroup/inference-server-green/fedcba9876543210",
    "LISTENER_RULE_ARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
    "listener-rule/app/inference-server/50dc6c495c0c9188/f2f7dc8efc522ab2/9683b2d02a6cabee",
    "TEST_LISTENER_RULE_ARN": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
    "listener-rule/app/inference-server/50dc6c495c0c9188/f2f7dc8efc522ab2/3f2a7b1c9d8e6f50",
    "ALB_DIMENSION": "app/inference-server/50dc6c495c0c9188",
    "TG_DIMENSION": "targetgroup/inference-server-blue/0123456789abcdef",
    "TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:inference-server-alerts",
}

# file -> (service, operation, how the file becomes the call's parameters)
FILES = {
    "task-definition.json": ("ecs", "RegisterTaskDefinition", "params"),
    "service.json": ("ecs", "CreateService", "params"),
    "service-bluegreen.json": ("ecs", "CreateService", "params"),
    "scalable-target.json": ("application-autoscaling", "RegisterScalableTarget", "params"),
    "scaling-cpu.json": ("application-autoscaling", "PutScalingPolicy", "params"),
    "scaling-requests.json": ("application-autoscaling", "PutScalingPolicy", "params"),
    "alarms.json": ("cloudwatch", "PutMetricAlarm", "list"),
    # PutDashboard: {DashboardName from dashboard.json, DashboardBody: dashboard-body.json's text}
    "dashboard.json": ("cloudwatch", "PutDashboard", "dashboard"),
    "dashboard-body.json": (None, None, "document"),
    # PutLifecyclePolicy: the file is the policy; deploy.sh passes it as lifecyclePolicyText.
    "ecr-lifecycle-policy.json": ("ecr", "PutLifecyclePolicy", "lifecycle"),
}

REPOSITORY_NAME = "inference-server"
MAX_STOP_TIMEOUT = 120  # Fargate's limit
SERVER_BINARY = "/usr/local/bin/inference-server"
# Read by the server besides its clap settings (tracing's filter, glibc's arenas).
EXTRA_SERVER_ENV = {"RUST_LOG", "MALLOC_ARENA_MAX"}
TREAT_MISSING = {"breaching", "notBreaching", "ignore", "missing"}  # no enum in the model

# CloudWatch metrics the dashboard and alarms may use, with their valid dimension sets
# (AWS docs: "Amazon ECS CloudWatch metrics", "Container Insights metrics", "CloudWatch
# metrics for your Application Load Balancer"). RunningTaskCount is Container Insights only:
# the seed's ["AWS/ECS", "RunningTaskCount"] graphs nothing.
_SVC = [{"ClusterName", "ServiceName"}]
_LB = [{"LoadBalancer"}, {"TargetGroup", "LoadBalancer"}]
_TG = [{"TargetGroup", "LoadBalancer"}]
METRICS = {
    "AWS/ECS": {
        "CPUUtilization": _SVC + [{"ClusterName"}],
        "MemoryUtilization": _SVC + [{"ClusterName"}],
        "CPUReservation": [{"ClusterName"}],
        "MemoryReservation": [{"ClusterName"}],
    },
    "ECS/ContainerInsights": {
        "RunningTaskCount": _SVC,
        "DesiredTaskCount": _SVC,
        "PendingTaskCount": _SVC,
    },
    "AWS/ApplicationELB": {
        "TargetResponseTime": _LB,
        "RequestCount": _LB,
        "HTTPCode_Target_5XX_Count": _LB,
        "HTTPCode_ELB_5XX_Count": [{"LoadBalancer"}],
        "HealthyHostCount": _TG,
        "UnHealthyHostCount": _TG,
        "RequestCountPerTarget": [{"TargetGroup"}, {"TargetGroup", "LoadBalancer"}],
    },
}
SUM_ONLY = {"RequestCountPerTarget"}  # its only valid statistic

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class Findings:
    """Results of one run: (name, category, errors) per check, printed or kept quiet."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.items: list[tuple[str, str, list[str]]] = []

    def add(self, name: str, category: str, errors: list[str]) -> None:
        self.items.append((name, category, errors))
        if self.verbose:
            if errors:
                print(f"FAIL {name}")
                for e in errors:
                    print(f"       {e}")
            else:
                print(f"ok   {name}")

    def failed(self, category: str | None = None) -> list[tuple[str, str, list[str]]]:
        return [i for i in self.items if i[2] and (category is None or i[1] == category)]


# ---------------------------------------------------------------- placeholders and shapes


def template_vars(deploy_sh: str) -> list[str]:
    m = re.search(r"^TEMPLATE_VARS=\(([^)]*)\)", deploy_sh, re.M)
    if not m:
        raise SystemExit("deploy.sh has no TEMPLATE_VARS=(...) line")
    return m.group(1).split()


def substitute(text: str, allowed: set[str]) -> tuple[str, list[str]]:
    errors = [
        f"placeholder ${{{name}}} is not in deploy.sh's TEMPLATE_VARS"
        for name in sorted(set(PLACEHOLDER.findall(text)))
        if name not in allowed
    ]
    out = PLACEHOLDER.sub(lambda m: SAMPLE.get(m.group(1), m.group(0)), text)
    if not errors and "${" in out:
        errors.append("a ${ is left after substitution")
    return out, errors


def enum_errors(value, shape, path: str) -> list[str]:
    """Every string checked against its shape's enum, through structures, lists and maps."""
    if shape is None:
        return []
    errors: list[str] = []
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for key, v in value.items():
            if key in shape.members:
                errors += enum_errors(v, shape.members[key], f"{path}.{key}")
    elif kind == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            errors += enum_errors(v, shape.member, f"{path}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        for key, v in value.items():
            errors += enum_errors(key, shape.key, f"{path} key {key!r}")
            errors += enum_errors(v, shape.value, f"{path}[{key!r}]")
    elif kind == "string" and isinstance(value, str):
        allowed = getattr(shape, "enum", None) or []
        if allowed and value not in allowed:
            errors.append(f"{path}: {value!r} is not one of {', '.join(allowed)}")
    return errors


# ---------------------------------------------------------------- project rules


def container(td: dict, name: str) -> dict:
    for c in td["containerDefinitions"]:
        if c.get("name") == name:
            return c
    raise KeyError(f"no container {name!r}")


def env_of(c: dict) -> dict:
    return {e["name"]: e["value"] for e in c.get("environment", [])}


def server_env_names() -> set[str]:
    src = (REPO / "inference/src/config.rs").read_text()
    return set(re.findall(r'env = "([A-Z0-9_]+)"', src)) | EXTRA_SERVER_ENV


def find_gpu(obj, path="") -> list[str]:
    """GPU requests anywhere: resourceRequirements type GPU, or inferenceAccelerators."""
    hits = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "resourceRequirements" and isinstance(v, list):
                hits += [f"{path}.{k}" for r in v if isinstance(r, dict) and r.get("type") == "GPU"]
            if k == "inferenceAccelerators" and v:
                hits.append(f"{path}.{k}")
            hits += find_gpu(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            hits += find_gpu(v, f"{path}[{i}]")
    return hits


def check_task_definition(td: dict) -> list[str]:
    e = []
    if td.get("requiresCompatibilities") != ["FARGATE"] or td.get("networkMode") != "awsvpc":
        e.append("must be FARGATE with networkMode awsvpc")
    if (td.get("cpu"), td.get("memory")) != ("1024", "2048"):
        e.append(f"cpu/memory must be the strings 1024/2048, got "
                 f"{td.get('cpu')!r}/{td.get('memory')!r}")
    if td.get("runtimePlatform") != {"operatingSystemFamily": "LINUX", "cpuArchitecture": "X86_64"}:
        e.append("runtimePlatform must be LINUX / X86_64 (the image is x86-64 only)")
    for hit in find_gpu(td):
        e.append(f"{hit}: Fargate has no GPUs (use EKS or ECS on EC2 with the -cuda image)")
    for c in td["containerDefinitions"]:
        n = c.get("name")
        # Fargate's task volume is root-owned 0755, so fetch-model writes it as root, with
        # every capability dropped; the server reads the file as 65532.
        want_user = "0" if n == "fetch-model" else "65532"
        if c.get("user") != want_user:
            e.append(f"{n}: user must be \"{want_user}\", got {c.get('user')!r}")
        if c.get("linuxParameters", {}).get("capabilities", {}).get("drop") != ["ALL"]:
            e.append(f"{n}: must drop ALL capabilities")
        if c.get("readonlyRootFilesystem") is not True:
            e.append(f"{n}: readonlyRootFilesystem must be true")
        if "stopTimeout" in c and not 0 < c["stopTimeout"] <= MAX_STOP_TIMEOUT:
            e.append(f"{n}: stopTimeout {c['stopTimeout']} is outside Fargate's "
                     f"1..{MAX_STOP_TIMEOUT}")
        if c.get("logConfiguration", {}).get("options", {}).get("awslogs-create-group") != "true":
            e.append(f"{n}: awslogs with awslogs-create-group \"true\"")
    fetch, server = container(td, "fetch-model"), container(td, "inference")
    if fetch["image"] != server["image"] or not server["image"].rsplit(":", 1)[0].endswith(
        "/inference-server"
    ):
        e.append("fetch-model and inference must run the same inference-server image")
    if fetch.get("essential") is not False:
        e.append("fetch-model must be essential: false (it exits when done)")
    cmd = fetch.get("command", [])
    env = env_of(server)
    if cmd[:1] != ["fetch"] or "--uri" not in cmd or "--out" not in cmd:
        e.append(f"fetch-model command must be `fetch --uri … --out …`, got {cmd}")
    elif cmd[cmd.index("--out") + 1] != env.get("MODEL_PATH"):
        e.append("fetch-model's --out must be the server's MODEL_PATH")
    if server.get("essential") is not True:
        e.append("inference must be essential")
    if server.get("dependsOn") != [{"containerName": "fetch-model", "condition": "SUCCESS"}]:
        e.append(f"inference must dependOn fetch-model SUCCESS, got {server.get('dependsOn')}")
    mounts = {(c["name"], m["sourceVolume"], m["containerPath"], m.get("readOnly", False))
              for c in (fetch, server) for m in c.get("mountPoints", [])}
    if ("fetch-model", "models", "/models", False) not in mounts or (
        "inference", "models", "/models", True
    ) not in mounts:
        e.append("volume models at /models: writable in fetch-model, readOnly in inference")
    for v in td.get("volumes", []):
        if set(v) - {"name"}:
            e.append(f"volume {v.get('name')}: Fargate task storage is a bare {{name}} bind mount")
    hc = server.get("healthCheck", {})
    hcmd = hc.get("command", [])
    if (
        hcmd[:3] != ["CMD", SERVER_BINARY, "probe"]
        or any("curl" in str(a) or "CMD-SHELL" in str(a) for a in hcmd)
        or "--path" not in hcmd
        or hcmd[hcmd.index("--path") + 1 :][:1] not in (["/health"], ["/ready"])
    ):
        e.append(f"health check must be exec-form [CMD, {SERVER_BINARY}, probe, --path, "
                 f"/health], got {hcmd}")
    if not hc.get("timeout", 5) < hc.get("interval", 30) or hc.get("startPeriod", 0) < 30:
        e.append("health check: timeout < interval, and a startPeriod of 30 s or more "
                 "(the model load)")
    ports = [p.get("containerPort") for p in server.get("portMappings", [])]
    if ports != [8080] or env.get("PORT", "8080") != "8080":
        e.append(f"inference must publish 8080 = PORT, got {ports}")
    unknown = set(env) - server_env_names()
    if unknown:
        e.append(f"inference env the server does not read (inference/src/config.rs): "
                 f"{sorted(unknown)}")
    if env.get("DEVICE") != "cpu":
        e.append("DEVICE must be cpu on Fargate")
    try:
        drain = float(env["SHUTDOWN_GRACE_SECONDS"]) + float(env["SHUTDOWN_TIMEOUT_SECONDS"])
    except (KeyError, ValueError):
        e.append("inference must set SHUTDOWN_GRACE_SECONDS and SHUTDOWN_TIMEOUT_SECONDS")
    else:
        if not drain < server.get("stopTimeout", 30):
            e.append(f"stopTimeout {server.get('stopTimeout', 30)} must exceed the drain "
                     f"({drain:g} s)")
    return e


def check_service(svc: dict, td: dict, alarm_names: set[str], bluegreen: bool) -> list[str]:
    e = []
    if "launchType" in svc:
        e.append("launchType must not be set with a capacityProviderStrategy")
    strategy = [
        (s.get("capacityProvider"), s.get("base", 0), s.get("weight"))
        for s in svc.get("capacityProviderStrategy", [])
    ]
    if strategy != [("FARGATE", 1, 1), ("FARGATE_SPOT", 0, 4)]:
        e.append("capacityProviderStrategy must be FARGATE base 1 weight 1, FARGATE_SPOT "
                 f"weight 4; got {strategy}")
    dc = svc.get("deploymentConfiguration", {})
    if (dc.get("maximumPercent"), dc.get("minimumHealthyPercent")) != (200, 100):
        e.append("deploymentConfiguration: maximumPercent 200, minimumHealthyPercent 100")
    if dc.get("deploymentCircuitBreaker") != {"enable": True, "rollback": True}:
        e.append("deploymentCircuitBreaker must be {enable: true, rollback: true}")
    missing = set(dc.get("alarms", {}).get("alarmNames", [])) - alarm_names
    if missing:
        e.append(f"deployment alarms not in alarms.json: {sorted(missing)}")
    if svc.get("desiredCount") != 3:
        e.append("desiredCount must be 3 (the seed's; the scaling policies take over)")
    if svc.get("taskDefinition") != td["family"]:
        e.append("taskDefinition must be the task definition's family")
    net = svc.get("networkConfiguration", {}).get("awsvpcConfiguration", {})
    if net.get("assignPublicIp") != "DISABLED" or len(net.get("subnets", [])) < 2:
        e.append("private subnets (two AZs), assignPublicIp DISABLED")
    if svc.get("enableExecuteCommand") is not False:
        e.append("enableExecuteCommand must be false")
    for lb in svc.get("loadBalancers", []):
        name, port = lb.get("containerName"), lb.get("containerPort")
        try:
            c = container(td, name)
        except KeyError:
            e.append(f"loadBalancers: no container {name!r} in the task definition")
            continue
        if port not in [p.get("containerPort") for p in c.get("portMappings", [])]:
            e.append(f"loadBalancers: {name} does not publish port {port}")
    adv = [lb.get("advancedConfiguration") for lb in svc.get("loadBalancers", [])]
    if bluegreen:
        if dc.get("strategy") != "BLUE_GREEN" or not dc.get("bakeTimeInMinutes"):
            e.append("blue/green: strategy BLUE_GREEN with a bakeTimeInMinutes")
        want = {"alternateTargetGroupArn", "productionListenerRule", "testListenerRule", "roleArn"}
        if not adv or not adv[0] or set(adv[0]) != want:
            e.append(f"blue/green: loadBalancers[0].advancedConfiguration needs {sorted(want)}")
        elif adv[0]["alternateTargetGroupArn"] == svc["loadBalancers"][0]["targetGroupArn"]:
            e.append("blue/green: the alternate target group must differ from the production one")
    elif dc.get("strategy", "ROLLING") != "ROLLING" or any(adv):
        e.append("service.json is the rolling update: no BLUE_GREEN, no advancedConfiguration")
    return e


def check_scaling(target: dict, cpu: dict, req: dict, svc: dict) -> list[str]:
    e = []
    resource = f"service/{SAMPLE['CLUSTER']}/{svc['serviceName']}"
    if (target.get("MinCapacity"), target.get("MaxCapacity")) != (2, 10):
        e.append("scalable target: MinCapacity 2, MaxCapacity 10")
    for name, doc in (("scalable-target", target), ("scaling-cpu", cpu), ("scaling-requests", req)):
        if (doc.get("ServiceNamespace"), doc.get("ScalableDimension"), doc.get("ResourceId")) != (
            "ecs", "ecs:service:DesiredCount", resource
        ):
            e.append(f"{name}: ecs / ecs:service:DesiredCount / {resource}")
    for name, doc, metric, value in (
        ("scaling-cpu", cpu, "ECSServiceAverageCPUUtilization", 70),
        ("scaling-requests", req, "ALBRequestCountPerTarget", 1000),
    ):
        tt = doc.get("TargetTrackingScalingPolicyConfiguration", {})
        if doc.get("PolicyType") != "TargetTrackingScaling":
            e.append(f"{name}: PolicyType TargetTrackingScaling")
        if tt.get("PredefinedMetricSpecification", {}).get("PredefinedMetricType") != metric:
            e.append(f"{name}: predefined metric {metric}")
        if tt.get("TargetValue") != value:
            e.append(f"{name}: TargetValue must be {value}, got {tt.get('TargetValue')}")
        if (tt.get("ScaleOutCooldown"), tt.get("ScaleInCooldown")) != (60, 300):
            e.append(f"{name}: ScaleOutCooldown 60, ScaleInCooldown 300")
    label = req.get("TargetTrackingScalingPolicyConfiguration", {}).get(
        "PredefinedMetricSpecification", {}
    ).get("ResourceLabel", "")
    if not re.fullmatch(r"app/[\w-]+/[0-9a-f]+/targetgroup/[\w-]+/[0-9a-f]+", label):
        e.append(f"scaling-requests: ResourceLabel {label!r} is not "
                 "app/<alb>/<id>/targetgroup/<tg>/<id>")
    return e


def metric_errors(where: str, ns: str, name: str, dims: dict, stat: str | None) -> list[str]:
    e = []
    known = METRICS.get(ns, {})
    if name not in known:
        hint = " (RunningTaskCount is ECS/ContainerInsights)" if name == "RunningTaskCount" else ""
        return [f"{where}: {ns} {name} is not a known metric{hint}"]
    if set(dims) not in known[name]:
        e.append(f"{where}: {ns} {name} has no dimension set {sorted(dims)}")
    patterns = {
        "LoadBalancer": r"app/[\w-]+/[0-9a-f]+",
        "TargetGroup": r"targetgroup/[\w-]+/[0-9a-f]+",
        "ClusterName": re.escape(SAMPLE["CLUSTER"]),
        "ServiceName": "inference-server",
    }
    for k, v in dims.items():
        if k in patterns and not re.fullmatch(patterns[k], str(v)):
            e.append(f"{where}: dimension {k}={v!r} does not look like {patterns[k]}")
    if name in SUM_ONLY and stat not in (None, "Sum"):
        e.append(f"{where}: {name} only has the Sum statistic")
    return e


def check_dashboard(body: dict) -> list[str]:
    e, seen = [], set()
    widgets = body.get("widgets")
    if not isinstance(widgets, list) or not widgets:
        return ["dashboard body has no widgets"]
    for i, w in enumerate(widgets):
        props = w.get("properties", {})
        if w.get("type") != "metric":
            continue
        if props.get("region") != SAMPLE["REGION"]:
            e.append(f"widget {i}: region must be ${{REGION}}")
        prev: list = []
        for j, row in enumerate(props.get("metrics", [])):
            opts = row[-1] if row and isinstance(row[-1], dict) else {}
            parts = row[:-1] if opts else row
            # "." repeats the previous row's value at the same position
            parts = [prev[k] if p == "." and k < len(prev) else p for k, p in enumerate(parts)]
            prev = parts
            if len(parts) < 2 or len(parts) % 2:
                e.append(f"widget {i} metric {j}: [namespace, name, dim, value, …] expected")
                continue
            ns, name = parts[0], parts[1]
            dims = dict(zip(parts[2::2], parts[3::2]))
            stat = opts.get("stat", props.get("stat"))
            e += metric_errors(f"widget {i} metric {j}", ns, name, dims, stat)
            seen.add((ns, name))
    want = {
        ("AWS/ECS", "CPUUtilization"), ("AWS/ECS", "MemoryUtilization"),
        ("ECS/ContainerInsights", "RunningTaskCount"),
        ("AWS/ApplicationELB", "TargetResponseTime"), ("AWS/ApplicationELB", "RequestCount"),
    }
    for ns, name in sorted(want - seen):
        e.append(f"the dashboard must graph {ns} {name} (the seed's widgets)")
    return e


def alarm_metrics(a: dict) -> list[tuple[str, str, dict, str | None]]:
    if "Metrics" in a:
        out = []
        for q in a["Metrics"]:
            if "MetricStat" in q:
                m = q["MetricStat"]["Metric"]
                dims = {d["Name"]: d["Value"] for d in m.get("Dimensions", [])}
                out.append((m["Namespace"], m["MetricName"], dims, q["MetricStat"].get("Stat")))
        return out
    dims = {d["Name"]: d["Value"] for d in a.get("Dimensions", [])}
    return [(a.get("Namespace"), a.get("MetricName"), dims, a.get("Statistic"))]


def check_alarms(alarms: list, raw: list, target: dict, cpu: dict) -> list[str]:
    e = []
    by_metric: dict[str, dict] = {}
    for a, r in zip(alarms, raw):
        n = a.get("AlarmName")
        if r.get("AlarmActions") != ["${TOPIC_ARN}"] or r.get("OKActions") != ["${TOPIC_ARN}"]:
            e.append(f"{n}: AlarmActions and OKActions must be [${{TOPIC_ARN}}]")
        if a.get("TreatMissingData") not in TREAT_MISSING:
            e.append(f"{n}: TreatMissingData must be one of {sorted(TREAT_MISSING)}")
        if "TreatMissingData" not in a.get("AlarmDescription", ""):
            e.append(f"{n}: AlarmDescription must say why its TreatMissingData")
        for ns, name, dims, stat in alarm_metrics(a):
            e += metric_errors(n, ns, name, dims, stat)
            by_metric.setdefault(name, a)
    def expect(metric, **want):
        a = by_metric.get(metric)
        if a is None:
            e.append(f"no alarm on {metric}")
            return
        got = {k: a.get(k) for k in want}
        if got != want:
            e.append(f"{a['AlarmName']}: expected {want}, got {got}")
    expect("TargetResponseTime", Statistic="Average", Period=60, EvaluationPeriods=2,
           Threshold=1.0, ComparisonOperator="GreaterThanThreshold")
    expect("HTTPCode_Target_5XX_Count", Statistic="Sum", Period=300, EvaluationPeriods=1,
           Threshold=10.0, ComparisonOperator="GreaterThanThreshold")
    expect("HealthyHostCount", Threshold=float(target.get("MinCapacity", 2)),
           ComparisonOperator="LessThanThreshold")
    at_max = by_metric.get("RunningTaskCount")
    if at_max is None:
        e.append("no alarm for CPU at the scaling ceiling (RunningTaskCount at MaxCapacity)")
    else:
        expr = " ".join(q.get("Expression", "") for q in at_max.get("Metrics", []))
        m = re.search(r">=\s*(\d+)", expr)
        tv = cpu.get("TargetTrackingScalingPolicyConfiguration", {}).get("TargetValue")
        if not m or int(m.group(1)) != target.get("MaxCapacity"):
            e.append(f"{at_max['AlarmName']}: the expression must compare tasks with MaxCapacity")
        if at_max.get("Threshold") != tv:
            e.append(f"{at_max['AlarmName']}: Threshold must be the CPU target ({tv})")
        periods = [q["MetricStat"]["Period"] for q in at_max["Metrics"] if "MetricStat" in q]
        if periods and periods[0] * at_max.get("EvaluationPeriods", 0) != 900:
            e.append(f"{at_max['AlarmName']}: must span 15 minutes")
    return e


def check_lifecycle(policy: dict) -> list[str]:
    e, rules = [], policy.get("rules", [])
    prios = [r.get("rulePriority") for r in rules]
    if not rules or len(set(prios)) != len(prios) or not all(isinstance(p, int) for p in prios):
        return ["rules need unique integer rulePriority values"]
    for r in rules:
        sel, p = r.get("selection", {}), r["rulePriority"]
        status = sel.get("tagStatus")
        if status not in ("tagged", "untagged", "any"):
            e.append(f"rule {p}: tagStatus {status!r}")
        if status == "any" and p != max(prios):
            e.append(f"rule {p}: a tagStatus any rule must have the highest rulePriority")
        lists = {"tagPrefixList", "tagPatternList"} & set(sel)
        if (status == "tagged") != bool(lists):
            e.append(f"rule {p}: tagPrefixList/tagPatternList with tagged, and only then")
        ct = sel.get("countType")
        if ct not in ("imageCountMoreThan", "sinceImagePushed"):
            e.append(f"rule {p}: countType {ct!r}")
        if (ct == "sinceImagePushed") != ("countUnit" in sel):
            e.append(f"rule {p}: countUnit days with sinceImagePushed, and only then")
        if not isinstance(sel.get("countNumber"), int) or sel["countNumber"] < 1:
            e.append(f"rule {p}: countNumber must be a positive integer")
        if r.get("action") != {"type": "expire"}:
            e.append(f"rule {p}: action must be {{type: expire}}")
    kept = [r["selection"]["countNumber"] for r in rules
            if r.get("selection", {}).get("countType") == "imageCountMoreThan"]
    if kept and min(kept) < 10:
        e.append("keep at least 10 images, so a rollback finds its image")
    return e


def check_deploy_sh(text: str, td: dict) -> list[str]:
    e = []
    m = re.search(r"^DEREGISTRATION_DELAY=(\d+)", text, re.M)
    stop = container(td, "inference").get("stopTimeout")
    if not m or int(m.group(1)) != stop:
        e.append(f"deploy.sh DEREGISTRATION_DELAY must equal the inference stopTimeout ({stop})")
    for name in FILES:
        if name not in text:
            e.append(f"deploy.sh never uses {name}")
    for needle in ("set -euo pipefail", "--health-check-path /ready", "HttpCode=200",
                   "stop-service-deployment", "--stop-type ROLLBACK", "envsubst \"$shell_format\""):
        if needle not in text:
            e.append(f"deploy.sh lacks {needle!r}")
    return e


# ---------------------------------------------------------------- one run over a set of texts


def run_checks(texts: dict[str, str], deploy_sh: str, verbose: bool) -> Findings:
    f = Findings(verbose)
    session = botocore.session.get_session()
    models: dict = {}
    allowed = set(template_vars(deploy_sh))
    f.add("deploy.sh TEMPLATE_VARS = the validator's sample values", "placeholder",
          [f"{v}: in one list only" for v in sorted(allowed ^ set(SAMPLE))])

    raw: dict = {}
    docs: dict = {}
    rendered: dict[str, str] = {}
    for name in FILES:
        if name not in texts:
            f.add(f"{name}: present", "json", ["missing"])
            continue
        errs = []
        try:
            raw[name] = json.loads(texts[name])
        except json.JSONDecodeError as exc:
            errs.append(f"the template is not JSON: {exc}")
        out, perrs = substitute(texts[name], allowed)
        f.add(f"{name}: placeholders", "placeholder", perrs)
        if not errs:
            try:
                docs[name] = json.loads(out)
                rendered[name] = out
            except json.JSONDecodeError as exc:
                errs.append(f"not JSON after substitution: {exc}")
        f.add(f"{name}: JSON", "json", errs)
    if set(docs) != set(FILES):
        return f

    calls: list[tuple[str, str, str, dict]] = []
    for name, (svc, op, how) in FILES.items():
        if how == "params":
            calls.append((name, svc, op, docs[name]))
        elif how == "list":
            for i, item in enumerate(docs[name]):
                calls.append((f"{name}[{i}] {item.get('AlarmName', '')}", svc, op, item))
        elif how == "dashboard":
            calls.append((f"{name} + dashboard-body.json", svc, op,
                          dict(docs[name], DashboardBody=rendered["dashboard-body.json"])))
        elif how == "lifecycle":
            calls.append((name, svc, op, {"repositoryName": REPOSITORY_NAME,
                                          "lifecyclePolicyText": rendered[name]}))
    for label, svc, op, params in calls:
        if svc not in models:
            models[svc] = session.get_service_model(svc)
        shape = models[svc].operation_model(op).input_shape
        report = ParamValidator().validate(params, shape)
        f.add(f"{label}: botocore {svc} {op} shape", "shape",
              report.generate_report().splitlines() if report.has_errors() else [])
        f.add(f"{label}: enums", "enum", enum_errors(params, shape, op))

    def project(label, fn, *args):
        try:
            errs = fn(*args)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            errs = [f"malformed: {type(exc).__name__}: {exc}"]
        f.add(label, "project", errs)

    td = docs["task-definition.json"]
    alarm_names = {a.get("AlarmName") for a in docs["alarms.json"]}
    project("task-definition.json: Fargate, no GPU, probe health check, users 0 (fetch, no capabilities) and 65532, read-only "
            "root, drain < stopTimeout <= 120, fetch-model SUCCESS first",
            check_task_definition, td)
    project("service.json: Spot strategy, 200/100 rolling, circuit breaker, container/port match",
            check_service, docs["service.json"], td, alarm_names, False)
    project("service-bluegreen.json: the same + BLUE_GREEN with advancedConfiguration",
            check_service, docs["service-bluegreen.json"], td, alarm_names, True)
    project("service.json = service-bluegreen.json apart from blue/green", lambda a, b: [
        f"they differ in {k}" for k in sorted(set(a) | set(b))
        if k not in ("deploymentConfiguration", "loadBalancers") and a.get(k) != b.get(k)
    ], docs["service.json"], docs["service-bluegreen.json"])
    project("scaling: 2..10 tasks, CPU 70, 1000 requests/target, cooldowns 60/300",
            check_scaling, docs["scalable-target.json"], docs["scaling-cpu.json"],
            docs["scaling-requests.json"], docs["service.json"])
    project("alarms.json: the seed's two + healthy hosts + at max capacity, TOPIC_ARN actions",
            check_alarms, docs["alarms.json"], raw["alarms.json"], docs["scalable-target.json"],
            docs["scaling-cpu.json"])
    project("dashboard-body.json: metrics exist in their namespaces with valid dimensions",
            check_dashboard, docs["dashboard-body.json"])
    project("ecr-lifecycle-policy.json: a valid lifecycle policy", check_lifecycle,
            docs["ecr-lifecycle-policy.json"])
    project("deploy.sh agrees with the files (deregistration delay = stopTimeout, /ready 200)",
            check_deploy_sh, deploy_sh, td)
    return f


# ---------------------------------------------------------------- deploy.sh and the aws CLI


def check_render_parity(examples: Path, texts: dict[str, str], f: Findings) -> None:
    """deploy.sh's render (envsubst limited to TEMPLATE_VARS) must give our substitution."""
    if not (shutil.which("bash") and shutil.which("envsubst")):
        print("skip deploy.sh render parity (no bash/envsubst)")
        return
    allowed = set(template_vars((examples / "deploy.sh").read_text()))
    names = list(FILES)
    script = ('source "$1"; shift; render "$@"; '
              'for f in "$@"; do cat "$RENDER_DIR/$f"; printf "\\0"; done')
    env = dict(os.environ, **SAMPLE)
    p = subprocess.run(["bash", "-c", script, "bash", str(examples / "deploy.sh"), *names],
                       env=env, capture_output=True, text=True)
    errs = [] if p.returncode == 0 else [p.stderr.strip() or f"exit {p.returncode}"]
    if not errs:
        for name, out in zip(names, p.stdout.split("\0")):
            if out != substitute(texts[name], allowed)[0]:
                errs.append(f"{name}: deploy.sh renders it differently")
    f.add("deploy.sh render (envsubst, TEMPLATE_VARS only) = the validator's substitution",
          "project", errs)
    if shutil.which("bash"):
        p = subprocess.run(["bash", "-n", str(examples / "deploy.sh")], capture_output=True,
                           text=True)
        f.add("deploy.sh: bash -n", "project", [p.stderr.strip()] if p.returncode else [])


def check_cli(examples: Path, texts: dict[str, str], f: Findings) -> None:
    """The aws CLI parses each rendered file as deploy.sh passes it; the request then goes to a
    closed local port, so a connection error is the success case."""
    aws = shutil.which("aws")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY="example",
               AWS_DEFAULT_REGION=SAMPLE["REGION"], AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard",
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_PAGER="")
    env.pop("AWS_PROFILE", None)
    if not aws or subprocess.run([aws, "--version"], env=env, capture_output=True).returncode:
        print("skip aws CLI acceptance (no working aws on PATH)")
        return
    # A port nothing listens on: bound, then released.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    allowed = set(template_vars((examples / "deploy.sh").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for name in FILES:
            out[name] = Path(tmp, name)
            out[name].write_text(substitute(texts[name], allowed)[0])
        alarms = json.loads(out["alarms.json"].read_text())
        runs = [(n, [FILES[n][0], cli_name(FILES[n][1]), "--cli-input-json", f"file://{out[n]}"])
                for n, (_, _, how) in FILES.items() if how == "params"]
        runs += [(f"alarms.json[{i}]", ["cloudwatch", "put-metric-alarm", "--cli-input-json",
                                        json.dumps(a)]) for i, a in enumerate(alarms)]
        runs.append(("dashboard.json", ["cloudwatch", "put-dashboard", "--cli-input-json",
                                        f"file://{out['dashboard.json']}", "--dashboard-body",
                                        f"file://{out['dashboard-body.json']}"]))
        runs.append(("ecr-lifecycle-policy.json", [
            "ecr", "put-lifecycle-policy", "--repository-name", REPOSITORY_NAME,
            "--lifecycle-policy-text", f"file://{out['ecr-lifecycle-policy.json']}"]))

        def run(args):
            return subprocess.run([aws, *args, "--endpoint-url", endpoint,
                                   "--cli-connect-timeout", "2"], env=env, capture_output=True,
                                  text=True, timeout=120)

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(run, [args for _, args in runs]))
        for (label, args), p in zip(runs, results):
            ok = "Could not connect to the endpoint URL" in p.stderr
            last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
            f.add(f"{label}: aws {args[0]} {args[1]} accepts it", "cli", [] if ok else [last])


def cli_name(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", op).lower()


# ---------------------------------------------------------------- self-test


def mutate_json(name: str, fn):
    def apply(texts: dict[str, str]) -> dict[str, str]:
        doc = json.loads(texts[name])
        fn(doc)
        return dict(texts, **{name: json.dumps(doc, indent=2)})
    return apply


def mutate_text(name: str, old: str, new: str):
    def apply(texts: dict[str, str]) -> dict[str, str]:
        assert old in texts[name], f"mutation target {old!r} not in {name}"
        return dict(texts, **{name: texts[name].replace(old, new, 1)})
    return apply


def inference(doc):
    return container(doc, "inference")


def fetch(doc):
    return container(doc, "fetch-model")


# (description, mutation, the check category that must report it)
MUTATIONS = [
    ("task cpu as an int", mutate_json("task-definition.json",
                                       lambda d: d.update(cpu=1024)), "shape"),
    ("an unknown key in a container", mutate_json(
        "task-definition.json", lambda d: inference(d).update(gpuCount=1)), "shape"),
    ("a required key missing (scalable target ResourceId)", mutate_json(
        "scalable-target.json", lambda d: d.pop("ResourceId")), "shape"),
    ('launchType "BANANA"', mutate_json("service.json",
                                        lambda d: d.update(launchType="BANANA")), "enum"),
    ('ulimit name "openfiles" (an enum inside a list)', mutate_json(
        "task-definition.json", lambda d: inference(d)["ulimits"][0].update(name="openfiles")),
     "enum"),
    ('dependsOn condition "DONE"', mutate_json(
        "task-definition.json", lambda d: inference(d)["dependsOn"][0].update(condition="DONE")),
     "enum"),
    ("a GPU resourceRequirement on Fargate", mutate_json(
        "task-definition.json",
        lambda d: inference(d).update(resourceRequirements=[{"type": "GPU", "value": "1"}])),
     "project"),
    ("a CMD-SHELL curl health check", mutate_json(
        "task-definition.json", lambda d: inference(d)["healthCheck"].update(
            command=["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"])),
     "project"),
    ("weight 3 on FARGATE_SPOT", mutate_json(
        "service.json", lambda d: d["capacityProviderStrategy"][1].update(weight=3)), "project"),
    ("a stray placeholder", mutate_text("task-definition.json", '"value": "tv-in1k"',
                                        '"value": "${MODEL_VERSION}"'), "placeholder"),
    ("launchType FARGATE beside the strategy", mutate_json(
        "service-bluegreen.json", lambda d: d.update(launchType="FARGATE")), "project"),
    ("maximumPercent 150", mutate_json(
        "service.json", lambda d: d["deploymentConfiguration"].update(maximumPercent=150)),
     "project"),
    ('the server as user "0"', mutate_json("task-definition.json",
                                          lambda d: inference(d).update(user="0")), "project"),
    ("fetch-model as root keeping its capabilities", mutate_json(
        "task-definition.json", lambda d: fetch(d).pop("linuxParameters")), "project"),
    ("a writable root filesystem", mutate_json(
        "task-definition.json", lambda d: inference(d).update(readonlyRootFilesystem=False)),
     "project"),
    ("stopTimeout 300", mutate_json("task-definition.json",
                                    lambda d: inference(d).update(stopTimeout=300)), "project"),
    ("stopTimeout shorter than the drain", mutate_json(
        "task-definition.json", lambda d: inference(d).update(stopTimeout=20)), "project"),
    ("the server starting without waiting for fetch-model", mutate_json(
        "task-definition.json", lambda d: inference(d)["dependsOn"][0].update(condition="START")),
     "project"),
    ("an env var the server does not read", mutate_json(
        "task-definition.json",
        lambda d: inference(d)["environment"].append({"name": "LOG_LEVEL", "value": "INFO"})),
     "project"),
    ("CPU target 80", mutate_json(
        "scaling-cpu.json",
        lambda d: d["TargetTrackingScalingPolicyConfiguration"].update(TargetValue=80.0)),
     "project"),
    ("scale-in cooldown 60", mutate_json(
        "scaling-requests.json",
        lambda d: d["TargetTrackingScalingPolicyConfiguration"].update(ScaleInCooldown=60)),
     "project"),
    ("MaxCapacity 20", mutate_json("scalable-target.json",
                                   lambda d: d.update(MaxCapacity=20)), "project"),
    ("container port 5000 in the service", mutate_json(
        "service.json", lambda d: d["loadBalancers"][0].update(containerPort=5000)), "project"),
    ("an alarm sending to another topic", mutate_json(
        "alarms.json", lambda d: d[0].update(AlarmActions=["arn:aws:sns:eu-west-1:1:other"])),
     "project"),
    ('TreatMissingData "sometimes"', mutate_json(
        "alarms.json", lambda d: d[1].update(TreatMissingData="sometimes")), "project"),
    ("the seed's AWS/ECS RunningTaskCount", mutate_text(
        "dashboard-body.json", '["ECS/ContainerInsights", "RunningTaskCount"',
        '["AWS/ECS", "RunningTaskCount"'), "project"),
    ("an untagged-any rule ordered first in the ECR policy", mutate_json(
        "ecr-lifecycle-policy.json", lambda d: d["rules"][1].update(rulePriority=0)), "project"),
    ("blue/green without a test listener rule", mutate_json(
        "service-bluegreen.json",
        lambda d: d["loadBalancers"][0]["advancedConfiguration"].pop("testListenerRule")),
     "project"),
]


def self_test(texts: dict[str, str], deploy_sh: str) -> int:
    base = run_checks(texts, deploy_sh, verbose=False)
    if base.failed():
        print("self-test: the unmutated files fail; fix them first")
        return 1
    missed = 0
    for desc, mutation, category in MUTATIONS:
        result = run_checks(mutation(texts), deploy_sh, verbose=False)
        hits = result.failed(category)
        if hits:
            first = hits[0][2][0]
            print(f"ok   self-test: {desc} -> caught by {category}: {first}")
        else:
            missed += 1
            others = [i[1] for i in result.failed()]
            print(f"FAIL self-test: {desc} was not reported by the {category} check"
                  + (f" (only by {sorted(set(others))})" if others else ""))
    print(f"self-test: {len(MUTATIONS) - missed}/{len(MUTATIONS)} mutations caught")
    return 1 if missed else 0


# ----------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=Path, default=REPO / "examples" / "ecs",
                    help="the directory of the ECS JSON files and deploy.sh (default: %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--self-test", action="store_true", help="only the mutation self-test")
    mode.add_argument("--no-self-test", action="store_true", help="skip the mutation self-test")
    ap.add_argument("--no-cli", action="store_true", help="skip the aws CLI acceptance check")
    args = ap.parse_args()

    examples = args.examples.resolve()
    texts = {p.name: p.read_text() for p in sorted(examples.glob("*.json"))}
    deploy_sh = (examples / "deploy.sh").read_text()
    status = 0
    if not args.self_test:
        f = run_checks(texts, deploy_sh, verbose=True)
        for extra in sorted(set(texts) - set(FILES)):
            f.add(f"{extra}: known to the validator", "json", ["not validated: add it to FILES"])
        if not f.failed("json"):
            check_render_parity(examples, texts, f)
            if not args.no_cli:
                check_cli(examples, texts, f)
        bad = f.failed()
        print(f"checks: {len(f.items) - len(bad)}/{len(f.items)} passed")
        status |= 1 if bad else 0
    if not args.no_self_test:
        status |= self_test(texts, deploy_sh)
    print("result:", "FAILED" if status else "all passed")
    return status


if __name__ == "__main__":
    sys.exit(main())
