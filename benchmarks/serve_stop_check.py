"""`ldm serve`'s progress and Stop on the device the server runs on (for a GPU: the compiled UNet
with CUDA graphs, where a stop ends a job between two graph replays).

Starts `ldm serve` as its own process, sends a long request naming its job, follows it on
/api/progress until it has run `--stop-at` steps, stops it, checks that the request answers 409,
then sends a 25-step request and checks that its images are the ones the same request made
before the stop:

    python3 benchmarks/serve_stop_check.py --compile on --n 64 --steps 400 --out $OUT/stop.json
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def call(url: str, fields: dict | None = None) -> tuple[int, dict]:
    data = None if fields is None else json.dumps(fields).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400, help="steps of the request that is stopped")
    parser.add_argument("--stop-at", type=int, default=20, help="stop once this many steps ran")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    command = [sys.executable, "-m", "ldmkit.cli", "serve", "--model", args.model, "--port", "0", "--quiet",
               "--device", args.device, "--compile", args.compile, "--max-images", str(args.n),
               "--max-steps", str(args.steps), "--warm-up", str(args.n)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    result: dict = {"model": args.model, "n": args.n, "steps": args.steps, "stop_at": args.stop_at}
    try:
        line = server.stdout.readline()
        while line.startswith("warming up"):
            line = server.stdout.readline()
        found = re.search(r"at (http://\S+/)", line)
        if not found:
            raise SystemExit(f"ldm serve did not start: {line!r}")
        url = found.group(1)
        short = {"n": args.n, "steps": 25, "seed": 5}
        before = call(url + "api/generate", short)
        request = {"n": args.n, "steps": args.steps, "seed": 5, "job_id": "to-stop"}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(call, url + "api/generate", request)
            seen, start = [], time.perf_counter()
            while True:
                report = call(url + "api/progress?job=to-stop")[1]
                seen.append(report)
                if report.get("step", 0) >= args.stop_at or report["state"] == "done":
                    break
                time.sleep(0.005)
            asked = time.perf_counter()
            result["stop_answer"] = call(url + "api/stop", {"job_id": "to-stop"})
            result["stopped_request"] = answer.result()
            result["stop_to_answer_s"] = time.perf_counter() - asked
            result["stopped_after_s"] = asked - start
        result["progress_reports"] = len(seen)
        result["final_report"] = call(url + "api/progress?job=to-stop")[1]
        after = call(url + "api/generate", {**short, "job_id": "after"})
        result["after_stop"] = {"status": after[0], "images": len(after[1].get("images", [])),
                                "same_images_as_before_the_stop": after[1].get("images") == before[1].get("images")}
        result["server_seconds_after_stop"] = after[1].get("seconds")
    finally:
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=120)
        result["exit_status"] = server.returncode
    status, body = result["stopped_request"]
    ok = (status == 409 and body.get("stopped") and result["final_report"] == {"state": "stopped"}
          and result["after_stop"]["status"] == 200 and result["after_stop"]["same_images_as_before_the_stop"]
          and result["exit_status"] == 0)
    print(f"stop asked after {result['stopped_after_s']:.2f} s ({result['progress_reports']} progress reports); "
          f"request answered {status} {body.get('error')!r} {result['stop_to_answer_s']:.3f} s later")
    print(f"next request: {result['after_stop']}, server {result['server_seconds_after_stop']} s; "
          f"exit status {result['exit_status']}; {'OK' if ok else 'FAILED'}")
    result["stopped_request"] = [status, {k: v for k, v in body.items() if k != "images"}]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
