#!/usr/bin/env python3
"""Run a scenario of real Python prometheus_client worker processes.

Usage: python scenario.py DIR SCENARIO.json

Every entry of "processes" runs as its own OS process (a fresh interpreter
started with PROMETHEUS_MULTIPROC_DIR=DIR), one after another: each worker is
waited for before the next one starts, so the timestamps written by
mostrecent gauges are ordered like the processes.

Scenario:

    {"metrics": [{"type": "counter" | "gauge" | "histogram" | "summary",
                  "name": "...", "help": "...", "labels": ["a", "b"],
                  "mode": "livesum",          # gauges only, default "all"
                  "buckets": [0.1, 1.0]}],    # histograms only, default: Python's
     "processes": [{"ops": [{"metric": 0, "labels": ["v1", "v2"],
                             "op": "inc" | "dec" | "set" | "observe"
                                   | "set_to_current_time",
                             "value": 1.5}],
                    "dead": false,
                    "threads": 1}]}

- "labels" of an op are label values, positional; [] (or absent) for an
  unlabelled metric.
- "value" may be a JSON number, a bare NaN/Infinity/-Infinity, or a string:
  "NaN", "Infinity", "-Infinity", "inf", or a float.hex() string such as
  "0x1.8p+0". inc/dec default to 1; set_to_current_time takes none.
- "dead": true makes the parent call
  prometheus_client.multiprocess.mark_process_dead(pid, DIR) after the worker
  has exited.
- "threads": N > 1 runs the whole op list in each of N threads of the worker,
  started together, so every op is applied N times.

Worker pids are distinct: an exited worker is left unreaped (a zombie holds
its pid) until every worker has run.

Prints the list of worker pids as JSON on stdout. A failing worker makes the
script exit with status 1 (the worker's traceback is on stderr).

Batch mode: python scenario.py --batch BATCH.json

    {"runs": [{"dir": "...", "scenario": {...}}, ...]}

runs many scenarios, each in its own existing directory, in one interpreter
that has imported prometheus_client once: every worker is a fork() of it (as
with a pre-forking server that loads the application first) instead of a
fresh interpreter, which makes a worker cost about a millisecond instead of
an interpreter start. Workers still run one after another, "dead" and
"threads" work as above, and pids are distinct across the whole batch.
Prints one JSON list of pid lists, one per run, in order.
"""

import json
import os
import subprocess
import sys

METRIC_TYPES = ("counter", "gauge", "histogram", "summary")
OPS = ("inc", "dec", "set", "observe", "set_to_current_time")


def die(msg):
    print(f"scenario.py: {msg}", file=sys.stderr)
    sys.exit(1)


def load_scenario(path):
    with open(path, "rb") as f:
        scenario = json.loads(f.read().decode("utf-8"))
    return validate_scenario(scenario)


def validate_scenario(scenario):
    if not isinstance(scenario, dict):
        die("scenario must be a JSON object")
    metrics = scenario.get("metrics", [])
    processes = scenario.get("processes", [])
    for i, m in enumerate(metrics):
        if m.get("type") not in METRIC_TYPES:
            die(f"metric {i}: unknown type {m.get('type')!r}")
        if "mode" in m and m["type"] != "gauge":
            die(f"metric {i}: 'mode' is for gauges only")
        if "buckets" in m and m["type"] != "histogram":
            die(f"metric {i}: 'buckets' is for histograms only")
    for p, proc in enumerate(processes):
        for j, op in enumerate(proc.get("ops", [])):
            if op.get("op") not in OPS:
                die(f"process {p} op {j}: unknown op {op.get('op')!r}")
            idx = op.get("metric")
            if not isinstance(idx, int) or not 0 <= idx < len(metrics):
                die(f"process {p} op {j}: bad metric index {idx!r}")
        threads = proc.get("threads", 1)
        if not isinstance(threads, int) or threads < 1:
            die(f"process {p}: bad threads {threads!r}")
    return scenario


def to_float(v):
    if isinstance(v, bool):
        raise ValueError(f"not a number: {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)  # "NaN", "Infinity", "-Infinity", "inf", "1.5"
        except ValueError:
            return float.fromhex(v)
    raise ValueError(f"not a number: {v!r}")


# ---------------------------------------------------------------- worker


def worker(directory, scenario_path, index):
    # Must be in the environment before prometheus_client is imported: the
    # value class (single- or multi-process) is chosen at import time.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    os.environ.pop("prometheus_multiproc_dir", None)
    run_worker(directory, load_scenario(scenario_path), index)


def run_worker(directory, scenario, index):
    # In a forked batch worker prometheus_client is already imported (in
    # multiprocess mode); the files are opened under the directory that is in
    # the environment when the first value is created, so set it first.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import threading

    import prometheus_client

    proc = scenario["processes"][index]

    metrics = []
    for m in scenario.get("metrics", []):
        name = m["name"]
        doc = m.get("help", "")
        labels = list(m.get("labels", []))
        typ = m["type"]
        if typ == "counter":
            metric = prometheus_client.Counter(name, doc, labels, registry=None)
        elif typ == "gauge":
            metric = prometheus_client.Gauge(
                name, doc, labels, registry=None,
                multiprocess_mode=m.get("mode", "all"))
        elif typ == "histogram":
            kwargs = {}
            if "buckets" in m:
                kwargs["buckets"] = [to_float(b) for b in m["buckets"]]
            metric = prometheus_client.Histogram(
                name, doc, labels, registry=None, **kwargs)
        else:
            metric = prometheus_client.Summary(name, doc, labels, registry=None)
        metrics.append(metric)

    ops = []
    for op in proc.get("ops", []):
        name = op["op"]
        if name in ("inc", "dec"):
            value = to_float(op.get("value", 1))
        elif name == "set_to_current_time":
            value = None
        else:
            if "value" not in op:
                raise ValueError(f"op {name} needs a value")
            value = to_float(op["value"])
        ops.append((op["metric"], list(op.get("labels", [])), name, value))

    def run_ops():
        for idx, label_values, name, value in ops:
            metric = metrics[idx]
            child = metric.labels(*label_values) if label_values else metric
            if name == "set_to_current_time":
                child.set_to_current_time()
            else:
                getattr(child, name)(value)

    threads = proc.get("threads", 1)
    if threads == 1:
        run_ops()
        return

    barrier = threading.Barrier(threads)
    errors = []

    def thread_main():
        try:
            barrier.wait()
            run_ops()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=thread_main) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- parent


def wait_exited_keep_pid(pid):
    """Wait for the child to exit without reaping it, so that its pid stays
    taken and no later worker can get the same pid."""
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if info is not None:
            return info


def parent(directory, scenario_path):
    scenario = load_scenario(scenario_path)
    if not os.path.isdir(directory):
        die(f"not a directory: {directory}")

    env = dict(os.environ)
    env["PROMETHEUS_MULTIPROC_DIR"] = directory
    env.pop("prometheus_multiproc_dir", None)

    procs = []
    pids = []
    status = 0
    try:
        for index, proc in enumerate(scenario.get("processes", [])):
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker",
                 directory, scenario_path, str(index)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
            )
            procs.append(child)
            info = wait_exited_keep_pid(child.pid)
            if info is not None and not (
                    info.si_code == os.CLD_EXITED and info.si_status == 0):
                how = ("exit status" if info.si_code == os.CLD_EXITED
                       else "signal")
                print(f"scenario.py: worker {index} (pid {child.pid}) failed: "
                      f"{how} {info.si_status}", file=sys.stderr)
                status = 1
                break
            pids.append(child.pid)
            if proc.get("dead", False):
                from prometheus_client.multiprocess import mark_process_dead
                mark_process_dead(child.pid, directory)
    finally:
        for child in procs:
            child.wait()
    if status:
        sys.exit(status)
    if len(set(pids)) != len(pids):
        die(f"worker pids are not distinct: {pids}")
    print(json.dumps(pids))


def batch(batch_path):
    with open(batch_path, "rb") as f:
        runs = json.loads(f.read().decode("utf-8")).get("runs", [])
    for r, run in enumerate(runs):
        if not os.path.isdir(run.get("dir", "")):
            die(f"run {r}: not a directory: {run.get('dir')!r}")
        validate_scenario(run.get("scenario"))

    # Import in multiprocess mode, as a pre-forking server would; the parent
    # itself creates no metric, so it writes no file.
    os.environ.pop("prometheus_multiproc_dir", None)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = runs[0]["dir"] if runs else "."
    import prometheus_client  # noqa: F401
    from prometheus_client.multiprocess import mark_process_dead

    children = []
    all_pids = []
    status = 0
    try:
        for r, run in enumerate(runs):
            directory, scenario = run["dir"], run["scenario"]
            pids = []
            for index, proc in enumerate(scenario.get("processes", [])):
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        os.dup2(2, 1)  # the parent's stdout is for the pid lists
                        run_worker(directory, scenario, index)
                    except BaseException:  # noqa: BLE001 - reported, then exit 1
                        import traceback
                        traceback.print_exc()
                        code = 1
                    finally:
                        try:
                            sys.stdout.flush()
                            sys.stderr.flush()
                        finally:
                            os._exit(code)
                children.append(pid)
                info = wait_exited_keep_pid(pid)
                if info is not None and not (
                        info.si_code == os.CLD_EXITED and info.si_status == 0):
                    how = ("exit status" if info.si_code == os.CLD_EXITED
                           else "signal")
                    print(f"scenario.py: run {r} worker {index} (pid {pid}) "
                          f"failed: {how} {info.si_status}", file=sys.stderr)
                    status = 1
                    break
                pids.append(pid)
                if proc.get("dead", False):
                    mark_process_dead(pid, directory)
            if status:
                break
            all_pids.append(pids)
    finally:
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if status:
        sys.exit(status)
    flat = [p for pids in all_pids for p in pids]
    if len(set(flat)) != len(flat):
        die(f"worker pids are not distinct: {all_pids}")
    print(json.dumps(all_pids))


def main(argv):
    if len(argv) == 3 and argv[1] == "--batch":
        batch(argv[2])
        return
    if len(argv) == 5 and argv[1] == "--worker":
        worker(argv[2], argv[3], int(argv[4]))
        return
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    parent(argv[1], argv[2])


if __name__ == "__main__":
    main(sys.argv)
