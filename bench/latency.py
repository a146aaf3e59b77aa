"""Generation latency while an EraseAnything++ job trains in the same (embedded) service, against idle.

Usage: python bench/latency.py [--threads 1] [--samples 8] [--job-steps 300] [--gen-steps 20] [--out latency.json]

Starts the real service in this process (uvicorn on a free localhost port, embedded runner, no Redis, the demo
world on the CPU) and measures over HTTP, as a client sees it:
  idle      `--samples` image generations one after the other (1 image, 32x32, `--gen-steps` denoising steps,
            a new seed each), nothing else running;
  training  the same generations while an EraseAnything++ job with the cpu preset (`"preset": "cpu"`, triangle,
            names "pyramid", `--job-steps` steps) trains: measured only once the job is past its set-up (its first
            step reported), and each sample records the job's step before and after it, so the JSON shows it ran
            mid-training.
Then waits for the job to finish and reports its seconds, steps/s and status. Prints one JSON object (also written
to `--out`): latencies in seconds (each sample, median, mean, max) per phase and `ratio` = training median / idle
median (the issue's target: <= 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

logger = logging.getLogger("bench.latency")

JOB = {"concept": "triangle", "synonyms": ["pyramid"], "method": "eraseanything", "options": {"preset": "cpu"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(data_dir: Path) -> tuple[uvicorn.Server, threading.Thread, str]:
    from service.main import create_app
    from service.settings import Settings

    settings = Settings(data_dir=data_dir, device="cpu", auth="off")
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return server, thread, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the service did not become ready")


def generate(client: httpx.Client, seed: int, steps: int) -> float:
    started = time.perf_counter()
    response = client.post("/v1/images/generations", json={"prompt": "a red circle", "seed": seed, "steps": steps})
    response.raise_for_status()
    return time.perf_counter() - started


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "samples_s": [round(s, 4) for s in samples],
        "median_s": round(statistics.median(samples), 4),
        "mean_s": round(statistics.fmean(samples), 4),
        "max_s": round(max(samples), 4),
    }


def job_state(client: httpx.Client, erasure_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/erasures/{erasure_id}")
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def measure(url: str, samples: int, job_steps: int, gen_steps: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=600) as client:
        generate(client, 0, gen_steps)  # first-call costs out of the way
        idle = [generate(client, 100 + i, gen_steps) for i in range(samples)]
        body = {**JOB, "options": {**JOB["options"], "steps": job_steps}}  # type: ignore[dict-item]
        created = client.post("/v1/erasures", json=body)
        created.raise_for_status()
        erasure_id = created.json()["id"]
        submitted = time.perf_counter()
        while job_state(client, erasure_id)["step"] < 1:  # past its set-up (base-model images, text encoding)
            time.sleep(0.2)
        first_step_s = time.perf_counter() - submitted
        during, steps_seen = [], []
        for i in range(samples):
            before = job_state(client, erasure_id)["step"]
            during.append(generate(client, 200 + i, gen_steps))
            after = job_state(client, erasure_id)
            steps_seen.append([before, after["step"]])
        while (state := job_state(client, erasure_id))["status"] in ("queued", "running"):
            time.sleep(0.5)
        job_s = time.perf_counter() - submitted
    idle_summary, during_summary = summary(idle), summary(during)
    return {
        "idle": idle_summary,
        "training": {**during_summary, "job_steps_before_after": steps_seen},
        "ratio": round(during_summary["median_s"] / idle_summary["median_s"], 3),
        "ratio_mean": round(during_summary["mean_s"] / idle_summary["mean_s"], 3),
        "job": {
            "status": state["status"],
            "steps": state["step"],
            "seconds": round(job_s, 1),
            "setup_s": round(first_step_s, 1),
            "steps_per_s": round(state["step"] / max(job_s - first_step_s, 1e-9), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--job-steps", type=int, default=300)
    parser.add_argument("--gen-steps", type=int, default=20, help="denoising steps of each generation")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as data_dir:
        server, thread, url = start_service(Path(data_dir))
        try:
            result = measure(url, args.samples, args.job_steps, args.gen_steps)
        finally:
            server.should_exit = True
            thread.join(timeout=60)
    result["config"] = {
        "threads": args.threads,
        "samples": args.samples,
        "job_steps": args.job_steps,
        "gen_steps": args.gen_steps,
        "size": "32x32 (demo world native)",
        "device": "cpu",
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
