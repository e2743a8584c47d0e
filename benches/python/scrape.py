"""Times Python's scrape of a multiprocess directory.

    scrape.py DIR ITER [--out FILE]

Runs `generate_latest(registry)` on a registry holding only a `MultiProcessCollector` of DIR: once
to warm up, then ITER times, in this process. Prints one JSON object on stdout: the minimum and
median seconds, every time, and the byte length of the output. With `--out`, also writes the
output of the last scrape to FILE (for comparing it with ours).
"""

import json
import statistics
import sys
import time

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector


def main():
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        at = args.index("--out")
        out = args[at + 1]
        del args[at:at + 2]
    if len(args) != 2:
        sys.exit("usage: scrape.py DIR ITER [--out FILE]")
    path, iterations = args[0], int(args[1])
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    text = generate_latest(registry)  # warm-up
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        text = generate_latest(registry)
        times.append(time.perf_counter() - start)
    if out:
        with open(out, "wb") as f:
            f.write(text)
    print(json.dumps({
        "min_s": min(times),
        "median_s": statistics.median(times),
        "times_s": times,
        "bytes": len(text),
        "python": sys.version.split()[0],
        "prometheus_client": getattr(prometheus_client, "__version__", None) or _version(),
    }))


def _version():
    try:
        from importlib.metadata import version
        return version("prometheus-client")
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
