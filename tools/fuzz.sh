#!/usr/bin/env bash
# Fuzzes bytes → tensor (fuzz/fuzz_targets/preprocess.rs) for FUZZ_SECONDS (default 300), seeded
# with the test photos. Needs the nightly toolchain; installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-300}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/corpus/preprocess
cp -n inference/tests/fixtures/images/* fuzz/corpus/preprocess/ 2>/dev/null || true
# The photos are up to 470 KB: let the fuzzer read whole files, and cap memory per input.
cargo +nightly fuzz run preprocess fuzz/corpus/preprocess -- \
  -max_total_time="$seconds" -max_len=600000 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
