"""Under pytest-xdist (`make test`: one worker a core) every worker and the processes its tests start
compute on one thread: torch's default of one thread a core, in each of them at once, oversubscribes the
cores and slows the whole suite down. Tests that set threads themselves are unaffected."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch when it is first imported, here and in subprocesses
    import torch

    torch.set_num_threads(1)
