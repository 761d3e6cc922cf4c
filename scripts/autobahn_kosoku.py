"""Run the Autobahn TestSuite cases (kosoku) against a WebSocket server.

Called by scripts/autobahn.mjs with the Python of the kosoku venv:

    python scripts/autobahn_kosoku.py --url ws://127.0.0.1:9001 \
        --cases '1.*,2.*' --outdir target/autobahn

What it adds to kosoku's own `kosoku` command:

* a workaround for a defect of kosoku 0.1.0 in the 12.x/13.x (permessage-deflate)
  cases, applied before any case runs (see `patch_compression_cases`);
* the selection is run one pattern at a time, and each case's result is printed
  as one JSON line on stdout as soon as its pattern finishes, so the caller can
  report partial results if it has to stop the run;
* the Autobahn-format reports (index.json, one JSON + HTML per case, index.html)
  are written to --outdir after each pattern.

stdout lines (JSON, one object each):
    {"type": "start", "kosoku": "0.1.0", "patched": [...], "url": ...}
    {"type": "result", "id": "1.1.1", "behavior": "OK", "behaviorClose": "OK", ...}
    {"type": "group", "pattern": "1.*", "cases": 16, "seconds": 0.2}
    {"type": "error", "pattern": "9.*", "message": "..."}
    {"type": "done", "seconds": 123.4}
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
import time

import kosoku
from kosoku._report import write_reports
from kosoku.cases import CASES

# The kosoku release this workaround was written and verified against.
KOSOKU_VERSION = "0.1.0"


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _as_bytes(msg, binary: bool):
    """The echoed payload as the bytes that were on the wire.

    kosoku 0.1.0 hands `onMessage` a `str` for every data message: a text
    message as the decoded Unicode text, a binary message as a latin-1 string
    (one code point 0-255 per octet). Autobahn's 12.x/13.x cases were written
    for Python 2, where both were byte strings, and feed `msg` straight to
    hashlib.sha1().update(), which raises TypeError on a `str` in Python 3.
    """
    if isinstance(msg, str):
        return msg.encode("latin-1" if binary else "utf-8")
    return msg


def patch_compression_cases() -> list[str]:
    """Wrap `onMessage` of the 12.x/13.x cases so they receive bytes.

    Defect (kosoku 0.1.0): every 12.* and 13.* case ends as behavior=ERROR,
    result "Strings must be encoded before hashing", whatever the server does,
    because `onMessage` hashes the `str` payload (see `_as_bytes`). Converting
    text with UTF-8 only is not enough: binary payloads (12.2 lena512.bmp,
    12.3 Faust, 12.5 PDF) would then be double-encoded and fail with "Echo'ed
    message length differs" even on a conformant server. Binary payloads must
    be converted back with latin-1.

    The wrapper is a no-op if a later kosoku passes `bytes`. Returns the ids of
    the patched cases; raises if the case classes no longer look as expected.
    """
    patched = []
    for case_id, cls in CASES.items():
        major = case_id.split(".", 1)[0]
        if major not in ("12", "13"):
            continue
        original = cls.__dict__.get("onMessage")
        if original is None or getattr(original, "_bytes_shim", False):
            if original is None:
                raise RuntimeError(f"kosoku case {case_id} has no onMessage to patch")
            continue

        def onMessage(self, msg, binary, _original=original):
            return _original(self, _as_bytes(msg, binary), binary)

        onMessage._bytes_shim = True  # type: ignore[attr-defined]
        cls.onMessage = onMessage
        patched.append(case_id)
    return patched


def _result_dict(r) -> dict:
    return {
        "type": "result",
        "id": r.case_id,
        "behavior": r.behavior.value,
        "behaviorClose": r.behavior_close.value,
        "result": r.result,
        "resultClose": r.result_close,
        "duration": r.duration,
        "remoteCloseCode": r.remote_close_code,
    }


async def run(url: str, patterns: list[str], outdir: str | None, parallelism: int) -> int:
    started = time.monotonic()
    seen: list[str] = []
    results = []
    errors = 0
    for pattern in patterns:
        t0 = time.monotonic()
        try:
            # Patterns may overlap (e.g. "1.*" and "1.1.1"): exclude what ran.
            group = await kosoku.run_fuzzingclient(
                url, [pattern], exclude_cases=list(seen) or None, concurrency=parallelism
            )
        except kosoku.FailureError as failure:  # some case did not pass
            group = failure.results
        except Exception as exc:  # connection refused, bad pattern, ...
            errors += 1
            _emit({"type": "error", "pattern": pattern, "message": f"{type(exc).__name__}: {exc}"})
            continue
        for r in group:
            seen.append(r.case_id)
            results.append(r)
            _emit(_result_dict(r))
        _emit({"type": "group", "pattern": pattern, "cases": len(group),
               "seconds": round(time.monotonic() - t0, 1)})
        if outdir and results:
            write_reports(results, outdir)
    _emit({"type": "done", "seconds": round(time.monotonic() - started, 1), "cases": len(results)})
    return 1 if errors else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT of the server under test")
    parser.add_argument("--cases", default="1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*,13.*",
                        help="comma-separated case ids or kosoku globs")
    parser.add_argument("--outdir", default=None, help="where to write the Autobahn-format reports")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--no-workaround", action="store_true",
                        help="run kosoku's 12.x/13.x cases unpatched (to see the defect)")
    args = parser.parse_args()

    version = importlib.metadata.version("kosoku")
    if version != KOSOKU_VERSION:
        print(f"warning: kosoku {version} installed; the 12.x/13.x workaround was verified "
              f"against {KOSOKU_VERSION}", file=sys.stderr)
    patched = [] if args.no_workaround else patch_compression_cases()
    _emit({"type": "start", "kosoku": version, "expected_kosoku": KOSOKU_VERSION,
           "patched_cases": len(patched), "url": args.url})
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
    sys.exit(asyncio.run(run(args.url, patterns, args.outdir, args.parallelism)))


if __name__ == "__main__":
    main()
