#!/usr/bin/env python3
"""seeds.py -- writes the hand-made seeds of the checked-in corpora, named for what they do.

fuzz/corpus/fuzz_allocator/ serves every target that reads the allocator format: fuzz_alloc_*,
fuzz_differential and fuzz_plugin (each also reads fuzz/corpus/<target>/ when it exists, for
inputs that crashed that target). The byte format is the allocator input format of fuzz/fuzz_helpers.h, i.e. what
harness/decode.c reads: config = [pin_count - 1 (mod 4)] then per pin [frame size index (mod
11)] [align index (mod 6)] [Frames (mod 65)] [flags: 1 MUST_ALLOCATE, 2 share heap 0]; then ops,
one byte each: low 3 bits 0-3 allocate, 4-6 free, 7 touch; the rest (>> 3) picks the pin; a
free/touch is followed by one byte, k mod live. The fuzzers grow these; `-merge=1` keeps the
corpora minimal. Run from the repository root: python3 fuzz/seeds.py
"""
import os

FRAME = {0: 0, 1: 1, 8: 2, 24: 3, 64: 4, 100: 5, 512: 6, 4096: 7, 4100: 8, 65536: 9, 1 << 20: 10}
ALIGN = {0: 0, 8: 1, 16: 2, 64: 3, 256: 4, 4096: 5}
MUST, SHARE = 1, 2


def config(*pins):
    out = [len(pins) - 1]
    for frame_bytes, align_bytes, frames, flags in pins:
        out += [FRAME[frame_bytes], ALIGN[align_bytes], frames, flags]
    return out


def alloc(pin=0):
    return [pin << 3]


def free(pin=0, k=0):
    return [(pin << 3) | 4, k]


def touch(pin=0, k=0):
    return [(pin << 3) | 7, k]


SEEDS = {
    "one-pin-page-fifo": config((4096, 64, 8, MUST)) + sum([alloc() for _ in range(8)], [])
    + sum([touch(0, k) for k in range(8)], []) + sum([free(0, 0) for _ in range(8)], []),
    "one-pin-lifo-odd-size": config((100, 8, 16, 0)) + sum([alloc() + alloc() + free(0, 1) for _ in range(10)], []),
    "bounded-past-capacity": config((512, 16, 4, MUST)) + sum([alloc() for _ in range(7)], [])
    + free(0, 2) + alloc() + alloc() + touch(0, 3),
    "defaults-random": config((0, 0, 0, 0)) + alloc() + alloc() + alloc() + free(0, 1) + touch(0, 1) + alloc()
    + free(0, 0) + free(0, 0) + free(0, 0),
    "three-pins-shared-heap": config((64, 8, 32, SHARE), (4096, 4096, 8, SHARE | MUST), (24, 0, 16, SHARE))
    + sum([alloc(p) for p in (0, 1, 2, 0, 1, 2, 0)], []) + free(1, 0) + free(0, 1) + touch(2, 1) + alloc(1)
    + free(2, 0) + free(0, 0) + touch(1, 1),
    "four-pins-mixed": config((1, 0, 64, 0), (4100, 256, 3, MUST), (65536, 4096, 2, 0), (8, 8, 0, SHARE))
    + sum([alloc(p) for p in (0, 1, 2, 3) * 3], []) + free(2, 0) + free(1, 1) + touch(3, 2) + free(0, 2),
    "wrap-fifo-window": config((512, 64, 6, 0)) + sum([alloc() for _ in range(5)], [])
    + sum([free(0, 0) + alloc() for _ in range(20)], []),
    "empty": [],
}

def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(bytes(data) if isinstance(data, list) else data.encode())


for name, data in SEEDS.items():
    write("fuzz/corpus/fuzz_allocator", name, data)
