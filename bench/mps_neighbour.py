#!/usr/bin/env python3
"""Keeps one-block spinning kernels running in a process of its own (another MPS client) for SECONDS,
to measure what a neighbour's resident grid costs a pinmoe process on the same GPU:
    python3 bench/mps_neighbour.py SECONDS [READY_FILE]
READY_FILE is created once the first kernel runs. Needs torch (the lent GPU machine has it)."""
import pathlib
import sys
import time

import torch

seconds = float(sys.argv[1])
torch.cuda.init()
torch.cuda._sleep(1000)
torch.cuda.synchronize()
if len(sys.argv) > 2:
    pathlib.Path(sys.argv[2]).touch()
end = time.monotonic() + seconds
cycles = 200_000_000  # ~0.1 s at the H200's clock; one block, one thread
while time.monotonic() < end:
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
