#!/usr/bin/env python3
"""Makes N files of 10 KiB of random bytes under DIR, 500 to a subdirectory (d00/f00000, ...):
the small-file workload of scripts/bench.sh and scripts/profile.sh rsync.
Usage: scripts/small-files.py DIR N"""
import os
import sys

d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, f"d{i // 500:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(10240))
