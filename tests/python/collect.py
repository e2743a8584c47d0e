#!/usr/bin/env python3
"""Scrape a multiprocess directory with Python's own collector.

Usage: python collect.py DIR [--text]

Without --text, prints the result of MultiProcessCollector(None, path=DIR).collect()
as JSON:

    [{"name": "...", "type": "...", "help": "...",
      "samples": [{"name": "...", "labels": {"k": "v"}, "value": "0x1.8000000000000p+0"}]}]

Values are float.hex() strings (lossless), or "nan", "inf", "-inf".

With --text, prints generate_latest() of a CollectorRegistry holding a
MultiProcessCollector on DIR (the raw exposition bytes).

If the collector raises, the exception goes to stderr and the exit status is 3.
"""

import json
import math
import sys
import traceback


def hex_value(v):
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v.hex()


def families_json(families):
    out = []
    for fam in families:
        out.append({
            "name": fam.name,
            "type": fam.type,
            "help": fam.documentation,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": hex_value(s.value)}
                for s in fam.samples
            ],
        })
    return json.dumps(out, sort_keys=True)


def main(argv):
    args = argv[1:]
    text = "--text" in args
    args = [a for a in args if a != "--text"]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    directory = args[0]

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    try:
        if text:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            data = generate_latest(registry)
        else:
            data = families_json(list(MultiProcessCollector(None, path=directory).collect()))
    except Exception as e:  # noqa: BLE001 - any collector failure is the answer
        traceback.print_exc(file=sys.stderr)
        print(f"collect.py: collector failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)

    if text:
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data)
        sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
