"""Times recording one sample with Python's prometheus_client, the other side of
benches/hot_path.rs.

    hot_path.py [--quick]

Times the same four operations as the Rust benchmark with `timeit`, first in multiprocess mode
(values in per-process mmap files under PROMETHEUS_MULTIPROC_DIR, which must be set before
prometheus_client is imported; a temporary directory is used when it is not set), then in
single-process mode (plain in-memory values) for context:

- counter_inc: `counter.inc()`
- gauge_set: `gauge.set(42.0)` (multiprocess mode `all`, Python's default)
- histogram_observe: `histogram.observe(0.3)`, default buckets (0.3 falls in `le="0.5"`)
- labelled_inc_3_labels: `family.labels("GET", "/users/{id}", "200").inc()` on an existing child

Each case runs for at least 0.2 s per repeat (doubling the loop count until it does, as
`Timer.autorange` does), 5 repeats (2 repeats of at least 0.02 s with `--quick`). Prints one JSON object on stdout: per mode and operation, the median and minimum
nanoseconds per operation over the repeats, and the versions.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import timeit

OPERATIONS = {
    "counter_inc": "counter.inc()",
    "gauge_set": "gauge.set(42.0)",
    "histogram_observe": "histogram.observe(0.3)",
    "labelled_inc_3_labels": 'family.labels("GET", "/users/{id}", "200").inc()',
}


def metrics(prefix):
    """One of each metric, outside any registry, created with the current value class."""
    from prometheus_client import Counter, Gauge, Histogram

    family = Counter(f"{prefix}_requests_total", "Requests.", ["method", "path", "code"],
                     registry=None)
    family.labels("GET", "/users/{id}", "200").inc()  # the child exists before timing
    return {
        "counter": Counter(f"{prefix}_jobs_total", "Jobs.", registry=None),
        "gauge": Gauge(f"{prefix}_queue", "Queue.", registry=None),
        "histogram": Histogram(f"{prefix}_latency_seconds", "Latency.", registry=None),
        "family": family,
    }


def time_all(names, repeat, min_seconds):
    out = {}
    for op, stmt in OPERATIONS.items():
        timer = timeit.Timer(stmt, globals=names)
        number = 1
        while True:  # autorange, to at least min_seconds per repeat
            if timer.timeit(number) >= min_seconds:
                break
            number *= 2
        per_op = [t / number * 1e9 for t in timer.repeat(repeat, number)]
        out[op] = {
            "median_ns": statistics.median(per_op),
            "min_ns": min(per_op),
            "number": number,
        }
    return out


def main():
    quick = "--quick" in sys.argv[1:]
    repeat, min_seconds = (2, 0.02) if quick else (5, 0.2)
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.TemporaryDirectory(prefix="hot-path-py-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir.name

    import prometheus_client
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        sys.exit("prometheus_client did not pick its multiprocess value class")
    multiprocess = time_all(metrics("mp"), repeat, min_seconds)
    files = sorted(f for f in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
                   if f.endswith(".db"))

    values.ValueClass = values.MutexValue
    single = time_all(metrics("sp"), repeat, min_seconds)

    print(json.dumps({
        "python": platform.python_version(),
        "prometheus_client": getattr(prometheus_client, "__version__", None)
        or _version("prometheus-client"),
        "repeat": repeat,
        "files": files,
        "multiprocess": multiprocess,
        "single_process": single,
    }))
    if own_dir is not None:
        own_dir.cleanup()


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # the version is informative only
        return "?"


if __name__ == "__main__":
    main()
