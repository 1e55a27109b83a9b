#!/bin/sh
# Copies the licence notices of every crate linked into a binary, for the image's runtime stage.
#   tools/third-party-licenses.sh OUT_DIR -p PACKAGE [--features …]
# Writes OUT_DIR/THIRD-PARTY.txt (name, version, SPDX licence of each crate) and
# OUT_DIR/<crate>-<version>/ with the crate's LICENSE / COPYING / NOTICE files, plus our own
# LICENSE. Runs where the crates are already fetched (after `cargo build --locked`).
set -eu
out=$1; shift
mkdir -p "$out"
cp LICENSE "$out/LICENSE"
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
cargo tree --locked --offline -e normal --prefix none --format '{p}|{l}' "$@" \
  | sed 's/ (\*)$//' | sort -u > "$out/.crates"
: > "$out/THIRD-PARTY.txt"
while IFS='|' read -r pkg licence; do
  name=${pkg%% *}; rest=${pkg#* v}; version=${rest%% *}
  case "$pkg" in *"(/"*) continue ;; esac   # our own workspace crates
  printf '%s %s: %s\n' "$name" "$version" "${licence:-see files}" >> "$out/THIRD-PARTY.txt"
  for dir in "$registry"/*/"$name-$version"; do
    [ -d "$dir" ] || continue
    find "$dir" -maxdepth 2 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' -o -iname 'notice*' -o -iname 'unlicense' \) \
      | while read -r f; do
          rel=${f#"$dir"/}
          mkdir -p "$out/$name-$version/$(dirname "$rel")"
          cp "$f" "$out/$name-$version/$rel"
        done
  done
done < "$out/.crates"
rm "$out/.crates"
n=$(wc -l < "$out/THIRD-PARTY.txt")
[ "$n" -gt 0 ] || { echo "third-party-licenses.sh: cargo tree listed no crates" >&2; exit 1; }
echo "licence notices of $n crates in $out"
