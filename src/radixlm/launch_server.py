"""`python -m radixlm.launch_server --model ...`: the HTTP server and its engine process.

The same as `radixlm serve`; the start-up itself lives in `radixlm.server.launch`.
"""

from __future__ import annotations

import os
import sys

# Read by OpenMP when torch loads; see radixlm.cli.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from radixlm.server.launch import main

if __name__ == "__main__":
    sys.exit(main())
