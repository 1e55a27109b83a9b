#!/usr/bin/env bash
# The operator at scale (operator/tests/scale.rs): SCALE_OBJECTS (default 1000) InferenceServices
# on a private control plane, this tree's operator and a baseline operator side by side in the
# same run. The baseline is built from BASELINE_REV (default 65633ea: the operator before issue
# 13's stores, predicates and skipped applies) in a worktree under .state/bench/, once.
# BASELINE_REV=none skips it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
rev=${BASELINE_REV:-65633ea}
t0=$SECONDS
if [[ "$rev" != none ]]; then
  base="$repo/.state/bench/operator-$rev"
  bin="$base/target/release/inference-operator"
  if [[ ! -x "$bin" ]]; then
    echo "== building the baseline operator at $rev (once; ~5 min cold)"
    git worktree add -f "$base/src" "$rev" >/dev/null 2>&1 || true
    (cd "$base/src" && CARGO_TARGET_DIR="$base/target" cargo build --release -q -p inference-operator --bin inference-operator)
  fi
  export BASELINE_OPERATOR_BIN="$bin"
fi
echo "== benchmark ($(( SECONDS - t0 ))s so far)"
cargo test --release -q -p inference-operator --test scale -- --ignored --nocapture
echo "== done in $(( SECONDS - t0 ))s"
