"""`v2i bench s3`: objects/s of extract's S3 download, one object at a time against many at once.

Three ways of fetching the same prefix alternate for a few rounds and their medians are reported:

- before: the download as extract did it until issue 43, one `client.download_file` after another;
- 1 worker: `download_prefix` with one object in flight;
- N workers: `download_prefix` as extract runs it (N = its default, or --workers).

By default the prefix is `--objects` objects of `--size` random bytes (a JPEG frame's size) on moto's S3 server,
started here on loopback (moto[server], a dev requirement); with --src it is an existing s3:// prefix, with the
endpoint and credentials from the environment as extract takes them. On loopback the server shares the CPU with the
client, so the figures show per-object overhead rather than network latency; against a remote endpoint, where every
request waits a round trip, more requests in flight gain more. Downloads go to a temporary folder under ./build.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from v2i_core.errors import V2IError
from v2i_core.storage import DOWNLOAD_WORKERS, download_prefix, list_objects, s3_client, split_s3

REPEATS = 5
SCRATCH = Path("build")  # beside the project's other build outputs, as `v2i bench extract` does
BUCKET = "v2i-bench-s3"
PREFIX = "frames"
# the environment boto3 reads, pointed at the loopback server for the run and restored afterwards
_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def download_one_by_one(uri: str, dest: Path) -> None:
    """Extract's download before issue 43, kept as the baseline: list, then one download_file at a time."""
    bucket, _ = split_s3(uri)
    client = s3_client()
    for key, rel in list_objects(client, uri):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))


def measure(uri: str, work: Path, workers: int = DOWNLOAD_WORKERS, repeats: int = REPEATS) -> dict:
    """Objects/s (and MB/s) of each way over `repeats` interleaved rounds of downloading `uri` into `work`."""
    ways = {
        "before": lambda dest: download_one_by_one(uri, dest),
        "1 worker": lambda dest: download_prefix(uri, dest, workers=1, progress=False),
        f"{workers} workers": lambda dest: download_prefix(uri, dest, workers=workers, progress=False),
    }
    objects = len(list_objects(s3_client(), uri))
    size = 0
    runs: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(repeats + 1):  # round 0 warms up the server, the connections and the disk
        for name, fetch in ways.items():  # interleaved, so every way sees the same machine load
            dest = work / f"round{round_}"
            start = time.perf_counter()
            fetch(dest)
            seconds = time.perf_counter() - start
            files = [path for path in dest.rglob("*") if path.is_file()]
            if len(files) != objects:
                raise V2IError(f"{uri}: '{name}' downloaded {len(files)} of the {objects} objects")
            size = sum(path.stat().st_size for path in files)
            shutil.rmtree(dest)
            if round_:
                runs[name].append(seconds)
    result = {"uri": uri, "objects": objects, "bytes": size, "repeats": repeats, "ways": {}}
    for name, seconds in runs.items():
        result["ways"][name] = {
            "objects_per_s": statistics.median(objects / s for s in seconds),
            "mb_per_s": statistics.median(size / s / 1e6 for s in seconds),
            "runs": [objects / s for s in seconds],
        }
    before = result["ways"]["before"]["objects_per_s"]
    for way in result["ways"].values():
        way["speed_up"] = way["objects_per_s"] / before
    return result


def report(result: dict) -> str:
    lines = [
        f"S3 download benchmark: {result['uri']}, {result['objects']} objects, {result['bytes'] / 1e6:.1f} MB, "
        f"median of {result['repeats']} interleaved runs"
    ]
    for name, way in result["ways"].items():
        runs = ", ".join(f"{v:.0f}" for v in way["runs"])
        lines.append(
            f"  {name:>10}: {way['objects_per_s']:7.1f} objects/s  {way['mb_per_s']:6.1f} MB/s  "
            f"x{way['speed_up']:.2f}  (runs: {runs})"
        )
    return "\n".join(lines)


def upload_objects(uri: str, count: int, size: int, seed: int = 0) -> None:
    """`count` objects of `size` random bytes under `uri`, in folders of 100 like a dataset's videos."""
    bucket, prefix = split_s3(uri)
    client = s3_client(DOWNLOAD_WORKERS)
    client.create_bucket(Bucket=bucket)
    rng = random.Random(seed)
    bodies = [rng.randbytes(size) for _ in range(count)]

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/v{i // 100:03d}/{i:06d}.jpg", Body=bodies[i])

    with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
        list(pool.map(put, range(count)))


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, with boto3's environment pointed at it; yields the endpoint."""
    if importlib.util.find_spec("moto") is None:
        raise V2IError("bench s3: moto is not installed (pip install 'moto[server]'), and no --src was given")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {key: os.environ.get(key) for key in _ENV}
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_port(port, proc)
        for key in _ENV:
            os.environ.pop(key, None)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise V2IError(f"bench s3: the moto server exited with code {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise V2IError(f"bench s3: the moto server did not listen on port {port} within {timeout:.0f}s")


def run(args, params=None, bench=None) -> int:
    workers = args.workers or DOWNLOAD_WORKERS
    if min(workers, args.objects, args.size, args.repeats) < 1:
        raise V2IError("bench s3: --workers, --objects, --size and --repeats must be positive")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir=SCRATCH) as tmp, contextlib.ExitStack() as stack:
        uri = args.src
        if not uri:
            stack.enter_context(moto_server())
            uri = f"s3://{BUCKET}/{PREFIX}"
            upload_objects(uri, args.objects, args.size)
        result = measure(uri, Path(tmp), workers, args.repeats)
    print(report(result))
    return 0
