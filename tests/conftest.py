"""Shared test settings.

One intra-op thread: the suite's models are tiny, and on a busy 2-core CI machine two threads
fighting over small convolutions made steps several times slower.
"""

import torch

torch.set_num_threads(1)
