#!/usr/bin/env python3
"""Parse an exposition from stdin with Python's own parsers.

Usage: python parse.py text|openmetrics < exposition

"text" uses prometheus_client.parser.text_string_to_metric_families,
"openmetrics" uses prometheus_client.openmetrics.parser.text_string_to_metric_families.

Prints the same JSON as collect.py:

    [{"name": "...", "type": "...", "help": "...",
      "samples": [{"name": "...", "labels": {"k": "v"}, "value": "0x1.8000000000000p+0"}]}]

Values are float.hex() strings (lossless), or "nan", "inf", "-inf".
A parse error (including input that is not UTF-8) goes to stderr, exit status 4.
"""

import json
import math
import sys
import traceback


def hex_value(v):
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:
            v = math.inf if v > 0 else -math.inf
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
    if len(argv) != 2 or argv[1] not in ("text", "openmetrics"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if argv[1] == "text":
        from prometheus_client.parser import text_string_to_metric_families
    else:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
        data = families_json(list(text_string_to_metric_families(text)))
    except Exception as e:  # noqa: BLE001 - any parser failure is the answer
        traceback.print_exc(file=sys.stderr)
        print(f"parse.py: {argv[1]} parse failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(4)
    sys.stdout.write(data)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
