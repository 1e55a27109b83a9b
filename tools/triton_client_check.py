#!/usr/bin/env python3
"""Drives the server's Open Inference Protocol v2 API with NVIDIA's client, `tritonclient[http]`.

This is a conformance check: if the stock client (which speaks Triton's HTTP/REST protocol, the
binary tensor data extension and the classification extension) can talk to us, so can the tools
built on it. It prints one line per check, `PASS name` or `FAIL name: reason`, then
`N passed, M failed`, and exits 1 if anything failed.

Usage (tools/test.sh makes the venv from tools/triton-requirements.txt):
  python3 -m venv .state/venv-triton
  .state/venv-triton/bin/pip install -r tools/triton-requirements.txt
  .state/venv-triton/bin/python tools/triton_client_check.py --url 127.0.0.1:8080 \
      --images inference/tests/fixtures/images [--model resnet50] \
      [--fp32-model resnet50-preprocessed] [--model-version 1] [--compression]

What the server does, and these checks hold it to (inference/src/http/v2/ implements it):

  * GET /v2/health/live, /v2/health/ready, /v2/models/{m}/ready  -> 200 (the client looks at the
    status code only); GET /v2 and /v2/models/{m} -> 200 + JSON.
  * Server metadata lists the extensions "classification" and "binary_tensor_data".
  * Two model names share the one network:
      --model       (default resnet50): one input `images`, BYTES, shape [-1]: one encoded image
                    file per element; output `logits` FP32 [-1, 1000].
      --fp32-model  (default resnet50-preprocessed): one input `input`, FP32, [-1, 3, 224, 224]
                    (resized, cropped, ImageNet-normalised, NCHW); output `logits` FP32 [-1, 1000].
    One input per model keeps Triton's own example clients (image_client.py) happy; they reject a
    model whose metadata lists two inputs.
  * POST /v2/models/{m}/infer and /v2/models/{m}/versions/{v}/infer (v = --model-version).
  * Binary tensor data extension, both directions:
      - request: when the `Inference-Header-Content-Length: n` header is present, the first n bytes
        of the body are the JSON header and the rest are the input blobs, concatenated in `inputs`
        order, each input carrying `parameters.binary_data_size` and no `data`. A BYTES blob is a
        sequence of (u32 little-endian length, bytes) elements; an FP32 blob is raw little-endian
        float32, row-major. tritonclient sends no Content-Type.
      - response: an output is returned binary when its requested output has
        `parameters.binary_data: true`, or when no outputs are listed and the request has
        `parameters.binary_data_output: true` (tritonclient's default when `outputs=None`).
        A binary output has `parameters.binary_data_size` and no `data`; the response then carries
        `Inference-Header-Content-Length` (the JSON header's length) and the blobs follow the JSON
        in the order of `outputs`. `binary_data: false` -> the usual JSON `data`.
  * Classification extension: requested output `logits` with `parameters.classification: k` ->
    BYTES output of shape [N, k], strings "score:index:label", best first (as today).
  * The request `id` is echoed in the response (image_client.py prints it).
  * Only with --compression: `Content-Encoding: gzip|deflate` request bodies (deflate = zlib
    format; the whole body is compressed, Inference-Header-Content-Length counts uncompressed
    bytes) and `Accept-Encoding: gzip|deflate` responses, compressed or not.

In a binary request a BYTES element is the raw image file; in a JSON request
(binary_data=False) it must be text -- tritonclient refuses to put non-UTF-8 bytes in JSON -- so
JSON BYTES elements are base64 of the file. The server's MODEL_VERSION defaults to "1.0": pass
--model-version 1.0 against a default server (inference/tests/tritonclient.rs does).
"""
from __future__ import annotations

import argparse
import base64
import sys
import traceback
from pathlib import Path

import numpy as np

try:
    import tritonclient.http as httpclient
except ImportError:  # pragma: no cover - a usage error, not a check failure
    sys.exit("tritonclient is not installed: pip install 'tritonclient[http]' numpy "
             "(see the docstring for the venv this project uses)")

OUTPUT = "logits"        # the one output of both models
BYTES_INPUT = "images"   # the BYTES input of --model
FP32_INPUT = "input"     # the FP32 input of --fp32-model
CLASSES = 1000           # ImageNet
SIZE = 224               # network input side
TOP_K = 3                # class_count for the classification checks
FP32_BATCH = 2           # batch of the FP32 checks (>1 so that row order is exercised)
# Score tolerances. Same request in another encoding (binary vs JSON, compressed): the same batch
# runs the same kernels, so only the 6-decimal score text differs. Another batch size may pick
# other kernels; with GPU_DTYPE=f16 the logits can then move in the 1e-3..1e-2 range (an estimate,
# not measured), hence the looser bound.
SAME_BATCH_TOL = 1e-3
CROSS_BATCH_TOL = 5e-2


class CheckFailed(Exception):
    """A check's expectation did not hold (as opposed to a crash inside the check)."""


def expect(cond: bool, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


class Runner:
    """Runs named checks, prints PASS/FAIL lines and counts them."""

    def __init__(self, verbose: bool) -> None:
        self.passed = 0
        self.failed = 0
        self.verbose = verbose

    def check(self, name: str, fn) -> object:
        """Runs fn(); returns its value on success, None on failure."""
        try:
            value = fn()
        except CheckFailed as e:
            self._fail(name, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - any exception is a failed check, with its reason
            # InferenceServerException's str() is "[status] message".
            self._fail(name, f"{type(e).__name__}: {e}")
            if self.verbose:
                traceback.print_exc()
            return None
        self.passed += 1
        print(f"PASS {name}", flush=True)
        return value

    def _fail(self, name: str, reason: str) -> None:
        self.failed += 1
        reason = " ".join(reason.split())  # one line per check
        print(f"FAIL {name}: {reason}", flush=True)


# ---------------------------------------------------------------------------------------------
# Helpers


def jpeg_files(folder: Path, n: int) -> list[Path]:
    """The first n JPEG files of folder, sorted by name (cycled if the folder has fewer)."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        sys.exit(f"no .jpg/.jpeg file in {folder}")
    return [files[i % len(files)] for i in range(n)]


def bytes_infer_input(images: list[bytes], binary: bool) -> httpclient.InferInput:
    """The BYTES input: raw files as binary data, or base64 text in JSON `data`."""
    inp = httpclient.InferInput(BYTES_INPUT, [len(images)], "BYTES")
    if binary:
        # Each element goes on the wire as u32-LE length + the raw file bytes.
        arr = np.array(images, dtype=np.object_)
    else:
        # JSON strings must be UTF-8; the client raises on raw JPEG bytes, so send base64.
        arr = np.array([base64.b64encode(b) for b in images], dtype=np.object_)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def output_was(result, binary: bool) -> None:
    """Checks that `logits` came back in the representation that was asked for."""
    out = result.get_output(OUTPUT)
    expect(out is not None, f"no output named {OUTPUT!r} in {list_outputs(result)}")
    params = out.get("parameters") or {}
    if binary:
        expect("binary_data_size" in params,
               f"asked for binary data but output has no parameters.binary_data_size: {brief(out)}")
        expect("data" not in out, "binary output also carries JSON `data`")
    else:
        expect("binary_data_size" not in params, "asked for JSON but got a binary output")
        expect("data" in out, f"JSON output has no `data`: {brief(out)}")


def list_outputs(result) -> list:
    return [o.get("name") for o in result.get_response().get("outputs", [])]


def brief(obj) -> str:
    s = repr(obj)
    return s if len(s) <= 200 else s[:200] + "..."


def output_array(result, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The one output as numpy, after checking its datatype and shape."""
    out = result.get_output(OUTPUT)
    expect(out is not None, f"no output named {OUTPUT!r} in {list_outputs(result)}")
    expect(out.get("datatype") == datatype,
           f"output datatype is {out.get('datatype')!r}, expected {datatype}")
    arr = result.as_numpy(OUTPUT)
    expect(arr is not None, "as_numpy returned None")
    expect(tuple(arr.shape) == shape, f"output shape {list(arr.shape)}, expected {list(shape)}")
    return arr


def parse_classes(result, n: int, k: int) -> list[list[tuple[float, int, str]]]:
    """Decodes the classification output into n rows of k (score, index, label), checking format."""
    arr = output_array(result, "BYTES", (n, k))
    rows = []
    for r in range(n):
        row = []
        for c in range(k):
            item = arr[r, c]
            # Binary BYTES outputs decode to `bytes`, JSON ones to `str`.
            text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            parts = text.split(":", 2)
            expect(len(parts) == 3 and parts[2] != "",
                   f"[{r},{c}] = {text!r} is not 'score:index:label'")
            try:
                score, index = float(parts[0]), int(parts[1])
            except ValueError:
                raise CheckFailed(f"[{r},{c}] = {text!r}: score or index is not a number") from None
            expect(0 <= index < CLASSES, f"[{r},{c}] = {text!r}: index out of range")
            row.append((score, index, parts[2]))
        scores = [s for s, _, _ in row]
        expect(all(a >= b for a, b in zip(scores, scores[1:])),
               f"row {r} scores are not in decreasing order: {scores}")
        expect(len({i for _, i, _ in row}) == k, f"row {r} repeats a class: {row}")
        rows.append(row)
    return rows


def same_classes(a, b, what: str, tol: float) -> None:
    """Two classification answers for the same images: per row, a class present in both has scores
    within tol; a class present in only one must be a near-tie (within tol) with the other answer's
    last place, so that f16 rounding on a GPU may swap near-equal classes but nothing else."""
    for r, (ra, rb) in enumerate(zip(a, b)):
        ma = {i: (s, label) for s, i, label in ra}
        mb = {i: (s, label) for s, i, label in rb}
        for i in ma.keys() & mb.keys():
            (sa, la), (sb, lb) = ma[i], mb[i]
            expect(la == lb, f"{what}: row {r} class {i} labelled {la!r} vs {lb!r}")
            expect(abs(sa - sb) <= tol, f"{what}: row {r} class {i} scores {sa} vs {sb}")
        for i in ma.keys() ^ mb.keys():
            s = ma[i][0] if i in ma else mb[i][0]
            last = min(v[0] for v in (mb if i in ma else ma).values())
            expect(abs(s - last) <= tol, f"{what}: row {r} classes differ: {ra} vs {rb}")


def fp32_batch(n: int) -> np.ndarray:
    """Seeded random NCHW data. Values are multiples of 1/32 in [-4, 4): exact in float32 and short
    in JSON (e.g. -3.96875), so the JSON and binary requests carry identical tensors and a
    [2,3,224,224] JSON body stays well under MAX_BODY_BYTES."""
    rng = np.random.default_rng(20240601)
    return (rng.integers(-128, 128, size=(n, 3, SIZE, SIZE)) / 32.0).astype(np.float32)


def fp32_logits(result, n: int) -> np.ndarray:
    arr = output_array(result, "FP32", (n, CLASSES))
    expect(arr.dtype == np.float32, f"logits dtype {arr.dtype}")
    expect(bool(np.isfinite(arr).all()), "logits contain NaN or inf")
    return arr


# ---------------------------------------------------------------------------------------------
# Checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="host:port of the server (no scheme)")
    ap.add_argument("--images", required=True, type=Path, help="folder with JPEG files")
    ap.add_argument("--model", default="resnet50", help="model with the BYTES (image file) input")
    ap.add_argument("--fp32-model", default="resnet50-preprocessed",
                    help="model with the FP32 [N,3,224,224] input")
    ap.add_argument("--model-version", default="1",
                    help="version used for the /versions/{v}/infer check")
    ap.add_argument("--compression", action="store_true",
                    help="also check gzip/deflate request and response bodies")
    ap.add_argument("--timeout", type=float, default=120.0, help="network timeout, seconds")
    ap.add_argument("-v", "--verbose", action="store_true", help="tracebacks on unexpected errors")
    args = ap.parse_args()

    client = httpclient.InferenceServerClient(
        url=args.url, connection_timeout=args.timeout, network_timeout=args.timeout)
    run = Runner(args.verbose)
    model = args.model
    files = jpeg_files(args.images, 3)
    images = [p.read_bytes() for p in files]

    # --- health and metadata --------------------------------------------------------------
    # is_* return True only for HTTP 200 (the body is not read).
    run.check("is_server_live", lambda: expect(client.is_server_live(), "not live"))
    run.check("is_server_ready", lambda: expect(client.is_server_ready(), "not ready"))
    run.check(f"is_model_ready({model})",
              lambda: expect(client.is_model_ready(model), "not ready"))
    run.check(f"is_model_ready({args.fp32_model})",
              lambda: expect(client.is_model_ready(args.fp32_model), "not ready"))

    def server_metadata():
        md = client.get_server_metadata()
        for field in ("name", "version", "extensions"):
            expect(field in md, f"no {field!r} in {brief(md)}")
        for ext in ("classification", "binary_tensor_data"):
            expect(ext in md["extensions"], f"extensions {md['extensions']} lack {ext!r}")

    run.check("get_server_metadata", server_metadata)

    def model_metadata(name, input_name, datatype, shape):
        md = client.get_model_metadata(name)
        expect(md.get("name") == name, f"name is {md.get('name')!r}, expected {name!r}")
        expect(isinstance(md.get("versions"), list), f"no versions list in {brief(md)}")
        inputs = md.get("inputs") or []
        expect(len(inputs) == 1,
               f"expected exactly one input, got {[i.get('name') for i in inputs]}")
        got = (inputs[0].get("name"), inputs[0].get("datatype"), inputs[0].get("shape"))
        want = (input_name, datatype, shape)
        expect(got == want, f"input is {got}, expected {want}")
        outputs = md.get("outputs") or []
        got = [(o.get("name"), o.get("datatype"), o.get("shape")) for o in outputs]
        expect(got == [(OUTPUT, "FP32", [-1, CLASSES])], f"outputs are {got}")

    run.check(f"get_model_metadata({model})",
              lambda: model_metadata(model, BYTES_INPUT, "BYTES", [-1]))
    run.check(f"get_model_metadata({args.fp32_model})",
              lambda: model_metadata(args.fp32_model, FP32_INPUT, "FP32", [-1, 3, SIZE, SIZE]))

    # --- BYTES images + classification extension -----------------------------------------
    # binary=True: raw files in the binary part, classification strings back as a binary BYTES
    # output (u32-LE length-prefixed). binary=False: base64 text in JSON `data`, JSON strings back.
    answers: dict[tuple[int, bool], list] = {}
    for n in (1, 3):
        for binary in (True, False):
            name = f"bytes infer batch={n} binary_data={binary} classification={TOP_K}"

            def bytes_infer(n=n, binary=binary):
                request_id = f"check-{n}-{int(binary)}"
                result = client.infer(
                    model,
                    [bytes_infer_input(images[:n], binary)],
                    outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=binary,
                                                             class_count=TOP_K)],
                    request_id=request_id,
                )
                got_id = result.get_response().get("id")
                expect(got_id == request_id,
                       f"response id is {got_id!r}, expected {request_id!r}")
                output_was(result, binary)
                answers[(n, binary)] = parse_classes(result, n, TOP_K)

            run.check(name, bytes_infer)

    def bytes_agree():
        missing = [key for key in [(1, True), (1, False), (3, True), (3, False)]
                   if key not in answers]
        expect(not missing, f"depends on the failed checks {missing}")
        same_classes(answers[(3, True)], answers[(3, False)], "batch 3 binary vs JSON",
                     SAME_BATCH_TOL)
        same_classes(answers[(1, True)], answers[(1, False)], "batch 1 binary vs JSON",
                     SAME_BATCH_TOL)
        same_classes(answers[(1, True)], answers[(3, True)][:1], "batch 1 vs row 0 of batch 3",
                     CROSS_BATCH_TOL)

    run.check("bytes infer answers agree (binary vs JSON, batch 1 vs 3)", bytes_agree)

    def versioned_infer():
        # POST /v2/models/{model}/versions/{v}/infer
        result = client.infer(
            model, [bytes_infer_input(images[:1], True)], model_version=args.model_version,
            outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=True, class_count=TOP_K)])
        output_was(result, True)
        rows = parse_classes(result, 1, TOP_K)
        if (1, True) in answers:
            same_classes(answers[(1, True)], rows, "versioned vs unversioned route", SAME_BATCH_TOL)

    run.check(f"bytes infer model_version={args.model_version!r} (/versions/ route)",
              versioned_infer)

    # --- FP32 preprocessed input ----------------------------------------------------------
    x = fp32_batch(FP32_BATCH)
    logits: dict[tuple[bool, bool], np.ndarray] = {}
    # (input binary, output binary): the two pure forms, then the two mixed ones the client allows
    # (JSON request with binary response: no Inference-Header-Content-Length on the request, but
    # one on the response; and the reverse).
    for in_bin, out_bin in ((True, True), (False, False), (False, True), (True, False)):
        name = (f"fp32 infer batch={FP32_BATCH} input binary_data={in_bin} "
                f"output binary_data={out_bin}")

        def fp32_infer(in_bin=in_bin, out_bin=out_bin):
            inp = httpclient.InferInput(FP32_INPUT, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=in_bin)
            outputs = [httpclient.InferRequestedOutput(OUTPUT, binary_data=out_bin)]
            result = client.infer(args.fp32_model, [inp], outputs=outputs)
            output_was(result, out_bin)
            logits[(in_bin, out_bin)] = fp32_logits(result, FP32_BATCH)

        run.check(name, fp32_infer)

    def fp32_agree():
        ref = logits.get((True, True))
        expect(ref is not None and len(logits) == 4, "depends on failed fp32 infer checks")
        expect(float(np.abs(ref[0] - ref[1]).max()) > 0, "the two rows have identical logits")
        for key, other in logits.items():
            diff = float(np.abs(other - ref).max())
            expect(diff <= 1e-5, f"{key} differs from binary/binary by {diff:g} (> 1e-5)")

    run.check("fp32 JSON and binary answers agree to 1e-5", fp32_agree)

    def fp32_default_outputs():
        # outputs=None: the client sends parameters.binary_data_output=true and expects every
        # output, in binary. This is what a plain `client.infer(model, inputs)` does.
        inp = httpclient.InferInput(FP32_INPUT, [1, 3, SIZE, SIZE], "FP32")
        inp.set_data_from_numpy(x[:1], binary_data=True)
        result = client.infer(args.fp32_model, [inp])
        expect(list_outputs(result) == [OUTPUT], f"outputs are {list_outputs(result)}")
        output_was(result, True)
        got = fp32_logits(result, 1)
        if (True, True) in logits:
            diff = float(np.abs(got[0] - logits[(True, True)][0]).max())
            # batch 1 vs row 0 of batch 2: another batch size, so allow kernel-level differences
            expect(diff <= CROSS_BATCH_TOL,
                   f"differs from row 0 of the batch-{FP32_BATCH} answer by {diff:g}")

    run.check("fp32 infer with no outputs listed (binary_data_output)", fp32_default_outputs)

    # --- optional: compressed bodies -------------------------------------------------------
    if args.compression:
        for algo in ("gzip", "deflate"):
            def compressed(algo=algo):
                # Content-Encoding on the request (the whole body: JSON + binary part) and
                # Accept-Encoding for the response; Inference-Header-Content-Length counts
                # uncompressed bytes in both directions.
                result = client.infer(
                    model, [bytes_infer_input(images[:3], True)],
                    outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=True,
                                                             class_count=TOP_K)],
                    request_compression_algorithm=algo, response_compression_algorithm=algo)
                output_was(result, True)
                rows = parse_classes(result, 3, TOP_K)
                if (3, True) in answers:
                    same_classes(answers[(3, True)], rows, f"{algo} vs uncompressed",
                                 SAME_BATCH_TOL)

            run.check(f"bytes infer {algo} request and response", compressed)

    client.close()
    print(f"{run.passed} passed, {run.failed} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
