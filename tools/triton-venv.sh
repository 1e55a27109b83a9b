#!/usr/bin/env bash
# Makes .state/venv-triton with NVIDIA's tritonclient (tools/triton-requirements.txt, from PyPI)
# unless it is already there and current. Used by tools/test.sh and `make bench-hostile`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.state/venv-triton
if "$venv/bin/python" -c 'import tritonclient.http, numpy' 2>/dev/null \
  && cmp -s tools/triton-requirements.txt "$venv/.requirements"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r tools/triton-requirements.txt
cp tools/triton-requirements.txt "$venv/.requirements"
