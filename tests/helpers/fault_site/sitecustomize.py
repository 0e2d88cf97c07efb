"""Loaded at start-up by a server (and its engine process) with this folder on PYTHONPATH.

RADIXLM_TEST_FAULTS=1: every forward over POISON fails; RADIXLM_TEST_STEP_DELAY=S: every
forward takes S seconds longer (see helpers.faults).
"""

import os
import sys

_FAULTS = os.environ.get("RADIXLM_TEST_FAULTS") == "1"
_DELAY = float(os.environ.get("RADIXLM_TEST_STEP_DELAY") or 0)

if _FAULTS or _DELAY:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from faults import poisoned, slowed

    from radixlm.executor.model_runner import ModelRunner

    if _FAULTS:
        ModelRunner.forward = poisoned(ModelRunner.forward)
    if _DELAY:
        ModelRunner.forward = slowed(ModelRunner.forward, _DELAY)
