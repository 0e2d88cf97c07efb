"""`python -m radixlm.launch_server --model ...`: the HTTP server and its engine process.

The same as `radixlm serve`; the start-up itself lives in `radixlm.server.launch`.
"""

from __future__ import annotations

import sys

from radixlm.server.launch import main  # sets the HTTP process's OpenMP policy first

if __name__ == "__main__":
    sys.exit(main())
