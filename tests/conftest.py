"""Suite-wide settings.

One intra-op thread for torch by default: the tests use tiny tensors, where extra threads
only add synchronisation, and on a shared machine (another job busy) oversubscription made
tiny training runs an order of magnitude slower. ``HYPERRL_TEST_THREADS=2`` runs the suite
with two threads, to check that no outcome depends on the thread count (threads change
how reductions are split, and so their rounding).
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("HYPERRL_TEST_THREADS", "1")))
