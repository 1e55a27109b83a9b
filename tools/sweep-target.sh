#!/usr/bin/env bash
# Usage: tools/sweep-target.sh [TARGET_DIR]   (make sweep)
# Deletes the build leftovers cargo never removes: in TARGET_DIR/{release,debug}/{deps,examples},
# every executable built more than 10 minutes before the newest of its name (a test or example
# binary whose hash changed leaves its old copy behind, ~80 MB each here; a crate's lib and bin
# test binaries share a name but are built together). Libraries and current binaries stay, so
# nothing is rebuilt. Prints what it freed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-${CARGO_TARGET_DIR:-target}}
[ -d "$target" ] || { echo "tools/sweep-target.sh: no $target" >&2; exit 1; }
declare -A seen
freed=0 count=0
for dir in "$target"/{release,debug}/{deps,examples}; do
  [ -d "$dir" ] || continue
  # name-HASH files without an extension that are executable, newest first per name.
  while IFS= read -r line; do
    time=${line%% *} file=${line#* }
    name=$(basename "$file"); name=${name%-*}
    if [ "${seen[$dir/$name]:-}" ] && (( time < seen[$dir/$name] - 600 )); then
      freed=$(( freed + $(stat -c %s "$file") )); count=$(( count + 1 ))
      rm -f -- "$file"
    elif [ -z "${seen[$dir/$name]:-}" ]; then
      seen[$dir/$name]=$time
    fi
  done < <(find "$dir" -maxdepth 1 -type f -perm -u+x -name '*-*' ! -name '*.*' -printf '%Ts %p\n' | sort -rn)
done
echo "removed $count stale binaries, $(( freed / 1048576 )) MB"
