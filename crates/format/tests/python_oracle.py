"""Oracle for python_oracle.rs: answers with what prometheus_client itself writes.

Usage: python python_oracle.py MODE [ARG]

The first output line is always the prometheus_client version. Every string crosses the
pipe hex-encoded (UTF-8 bytes), every float as the big-endian hex of its IEEE 754 bits, so
nothing depends on how either side escapes or rounds.

keys      stdin: one JSON array per line, [metric, sample, [[name, value], ...], help] (hex).
          stdout: per line, hex of json.dumps([metric, sample, dict(labels), help],
          sort_keys=True), after checking it equals mmap_key(...) and loads back.
floats    stdin: one float per line (hex bits).
          stdout: per line, "repr(x) floatToGoString(x)".
layout    ARG: a file path to create. stdin: per line "key value timestamp" (hex, hex bits,
          hex bits), written in order with MmapedDict.write_value; a key seen before is
          updated in place. stdout: the file size.
"""

import json
import os
import struct
import sys
from importlib.metadata import version

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString


def unhex(s):
    return bytes.fromhex(s).decode("utf-8")


def unbits(s):
    return struct.unpack(">d", bytes.fromhex(s))[0]


def keys(lines, out):
    for line in lines:
        m, s, labels, h = json.loads(line)
        m, s, h = unhex(m), unhex(s), unhex(h)
        pairs = [(unhex(n), unhex(v)) for n, v in labels]
        key = json.dumps([m, s, dict(pairs), h], sort_keys=True)
        names = [n for n, _ in pairs]
        values = [v for _, v in pairs]
        if key != mmap_key(m, s, names, values, h):
            raise SystemExit("json.dumps and mmap_key disagree on %r" % (key,))
        if json.loads(key) != [m, s, dict(pairs), h]:
            raise SystemExit("key does not load back: %r" % (key,))
        out.append(key.encode("utf-8").hex())


def floats(lines, out):
    for line in lines:
        x = unbits(line)
        out.append("%s %s" % (repr(x), floatToGoString(x)))


def layout(path, lines, out):
    d = MmapedDict(path)
    for line in lines:
        k, v, t = line.split(" ")
        d.write_value(unhex(k), unbits(v), unbits(t))
    d.close()
    out.append(str(os.path.getsize(path)))


def main():
    mode = sys.argv[1]
    lines = [l for l in sys.stdin.read().split("\n") if l]
    out = [version("prometheus_client")]
    if mode == "keys":
        keys(lines, out)
    elif mode == "floats":
        floats(lines, out)
    elif mode == "layout":
        layout(sys.argv[2], lines, out)
    else:
        raise SystemExit("unknown mode %r" % (mode,))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
