#!/usr/bin/env python3
"""Oracle for the multiprocess file key encoding.

Reads stdin line by line. Each line is a JSON object

    {"metric": HEX, "sample": HEX, "labels": [[HEXNAME, HEXVALUE], ...], "help": HEX}

where every HEX is the hex encoding of a string's UTF-8 bytes. For each line,
prints one line: the hex encoding of

    json.dumps([metric, sample, dict(labels), help], sort_keys=True).encode("utf-8")

which is exactly how prometheus_client.mmap_dict.mmap_key builds keys.
Empty lines are skipped. Output is flushed after every line.
"""

import json
import sys


def unhex(s):
    return bytes.fromhex(s).decode("utf-8")


def main():
    for line in sys.stdin.buffer:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line.decode("ascii"))
        metric = unhex(req["metric"])
        sample = unhex(req["sample"])
        labels = dict((unhex(k), unhex(v)) for k, v in req.get("labels", []))
        help_text = unhex(req["help"])
        key = json.dumps([metric, sample, labels, help_text], sort_keys=True)
        sys.stdout.write(key.encode("utf-8").hex())
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
