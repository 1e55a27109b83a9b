#!/usr/bin/env bash
# Makes .state/venv-s3 with moto's S3 server (tools/s3-requirements.txt, from PyPI) unless it is
# already there and current. Used by tools/test.sh for inference/tests/fetch_s3.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.state/venv-s3
if "$venv/bin/python" -c 'import moto.server, boto3' 2>/dev/null \
  && cmp -s tools/s3-requirements.txt "$venv/.requirements"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r tools/s3-requirements.txt
cp tools/s3-requirements.txt "$venv/.requirements"
