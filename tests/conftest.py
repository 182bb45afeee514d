"""Suite-wide settings.

One intra-op thread for torch: the tests use tiny tensors, where extra threads only add
synchronisation, and on a shared machine (another job busy) oversubscription made tiny
training runs an order of magnitude slower.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
