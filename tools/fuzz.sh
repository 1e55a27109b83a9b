#!/usr/bin/env bash
# Fuzzes bytes → tensor (fuzz/fuzz_targets/preprocess.rs) for FUZZ_SECONDS (default 300), seeded
# with tiny images of every format and colour type (fuzz/seeds/, written with PIL) — small inputs
# keep it at thousands of runs a second. FUZZ_PHOTOS=1 adds the test photos (slow: ~30 runs/s).
# Needs the nightly toolchain; installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-300}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
corpus=fuzz/corpus/preprocess-small max_len=16384
if [[ ${FUZZ_PHOTOS:-0} == 1 ]]; then
  corpus=fuzz/corpus/preprocess-photos max_len=600000 # the photos are up to 470 KB
  mkdir -p "$corpus" && cp -n inference/tests/fixtures/images/* "$corpus"/
fi
mkdir -p "$corpus"
cargo +nightly fuzz run preprocess "$corpus" fuzz/seeds -- \
  -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
