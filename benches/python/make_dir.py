"""Writes a multiprocess directory the way Python workers write it.

    make_dir.py DIR MODE FILES SERIES

Writes FILES files `counter_{pid}.db` (fake pids 1..FILES) into DIR, each with SERIES counter
series, through prometheus_client's own writer (`MmapedDict.write_value` with `mmap_key` keys):
the bytes are exactly those of a worker that incremented these counters.

MODE `same`: every file holds the same SERIES series (workers serving the same routes).
MODE `distinct`: each file holds its own SERIES series, FILES x SERIES series in all.

The series are those of a web application: 50% `http_requests_total` and 40%
`http_response_bytes_total`, labelled `method`/`path`/`status`, and 10% `jobs_processed_total`,
labelled `queue`/`task`/`outcome`; keys are 128 to 160 bytes (about 140). Values are integers made from the
series and file numbers. `benches/scrape.rs` has a Rust copy of this generator that writes the same
bytes, for machines without Python; keep the two in step.
"""

import os
import sys

from prometheus_client.mmap_dict import MmapedDict, mmap_key

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
STATUSES = ["200", "201", "204", "301", "304", "400", "401", "404", "500", "503"]
RESOURCES = ["users", "orders", "products", "carts", "invoices", "sessions", "search", "reviews"]
QUEUES = ["default", "emails", "reports", "billing"]
TASKS = ["send_welcome", "render_pdf", "charge_card", "sync_inventory", "rebuild_index"]
OUTCOMES = ["success", "retry", "failure"]

FAMILIES = {
    "http_requests": ("http_requests_total", "HTTP requests served."),
    "http_response_bytes": ("http_response_bytes_total", "HTTP response body bytes sent."),
    "jobs_processed": ("jobs_processed_total", "Background jobs processed."),
}


def series(i, series_count, g):
    """The family, label names and label values of series number `i` of a file (`g` numbers it
    across the directory: `i` in mode same, file * SERIES + i in mode distinct)."""
    tenth = i * 10 // series_count
    if tenth < 9:
        family = "http_requests" if tenth < 5 else "http_response_bytes"
        labels = (
            ("method", "path", "status"),
            (METHODS[g % 5], "/api/v1/%s/%d" % (RESOURCES[(g // 50) % 8], g // 50), STATUSES[(g // 5) % 10]),
        )
    else:
        family = "jobs_processed"
        labels = (
            ("queue", "task", "outcome"),
            (QUEUES[(g // 3) % 4], "%s_%d" % (TASKS[(g // 12) % 5], g // 12), OUTCOMES[g % 3]),
        )
    return family, labels


def value(g, f):
    return float((g * 2654435761 + f * 40503) % 100000)


def main():
    if len(sys.argv) != 5 or sys.argv[2] not in ("same", "distinct"):
        sys.exit("usage: make_dir.py DIR same|distinct FILES SERIES")
    path, mode, files, series_count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(path, exist_ok=True)
    same_keys = None
    for f in range(files):
        d = MmapedDict(os.path.join(path, "counter_%d.db" % (f + 1)))
        if mode == "same" and same_keys is not None:
            keys = same_keys
        else:
            keys = []
            for i in range(series_count):
                g = i if mode == "same" else f * series_count + i
                family, (names, values) = series(i, series_count, g)
                sample, help_text = FAMILIES[family]
                keys.append((g, mmap_key(family, sample, names, values, help_text)))
            if mode == "same":
                same_keys = keys
        write = d.write_value
        for g, key in keys:
            write(key, value(g, f), 0.0)
        d.close()


if __name__ == "__main__":
    main()
