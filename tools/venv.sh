#!/usr/bin/env bash
# Usage: tools/venv.sh NAME 'IMPORTS'
# Makes .state/venv-NAME from tools/NAME-requirements.txt (PyPI) unless it is already there, the
# Python statement IMPORTS runs in it, and the requirements it was made from are current. Used by
# tools/test.sh (triton: NVIDIA's tritonclient; s3: moto's S3 server) and `make bench-hostile`.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: tools/venv.sh NAME IMPORTS} check=${2:?usage: tools/venv.sh NAME IMPORTS}
venv=.state/venv-$name req=tools/$name-requirements.txt
if "$venv/bin/python" -c "$check" 2>/dev/null && cmp -s "$req" "$venv/.requirements"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$req"
cp "$req" "$venv/.requirements"
