"""Prices without AWS: how fast ``get_prices`` falls back to the snapshot (no credentials; unreachable AWS).

Target (issue 6): without credentials or network the price lookup falls back to the bundled snapshot
"within seconds": here under 2 s without credentials and under 2 x the connect timeout + 1 s when the
endpoints refuse connections (simulated on 127.0.0.1, so nothing leaves the machine). Each case runs in a
fresh process, imports included.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

from smml_lib.cost.pricing import CONNECT_TIMEOUT_S

SNIPPET = """
import time, json
t0 = time.perf_counter()
from smml_lib.cost.pricing import get_prices
t = get_prices()
print(json.dumps({"s": time.perf_counter() - t0, "source": t.source, "rows": len(t.frame)}))
"""


def main(argv: list[str]) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    empty = tempfile.mkdtemp(prefix="smml-no-aws-")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base.update(AWS_SHARED_CREDENTIALS_FILE=f"{empty}/credentials", AWS_CONFIG_FILE=f"{empty}/config",
                AWS_EC2_METADATA_DISABLED="true")
    cases = {
        "no credentials": (base, 2.0),
        "credentials, AWS unreachable": ({**base, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE", "AWS_SECRET_ACCESS_KEY":
                                          "example-secret", "AWS_ENDPOINT_URL_PRICING": f"http://127.0.0.1:{port}",
                                          "AWS_ENDPOINT_URL_EC2": f"http://127.0.0.1:{port}"},
                                         2 * CONNECT_TIMEOUT_S + 1.0),
    }
    for name, (env, target) in cases.items():
        out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, timeout=120)
        if out.returncode:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ok = r["source"] == "snapshot" and r["s"] < target
        print(f"{name:<30} {r['s']:5.2f} s to {r['source']} prices ({r['rows']} instance types); "
              f"target < {target:.0f} s: {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
