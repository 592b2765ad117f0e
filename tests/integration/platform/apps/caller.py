"""A plain HTTP client for `trellis run` tests: calls a service by name through HTTP_PROXY.

caller.py URL SECONDS EXIT_STATUS: GET URL in a loop for SECONDS (at least one call),
print a JSON summary {"versions": {version: count}, "failures": [...]} and exit with
EXIT_STATUS. urllib takes the proxy from HTTP_PROXY itself; nothing here knows the mesh.
"""

from __future__ import annotations

import collections
import json
import sys
import time
import urllib.request


def main() -> None:
    url, seconds, status = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    versions: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                versions[json.load(response)["version"]] += 1
        except Exception as exc:
            failures.append(f"{time.monotonic():.3f}: {exc!r}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    print(json.dumps({"versions": dict(versions), "failures": failures[:20]}), flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
