"""bench.storage: atomic writes that concurrent writers cannot corrupt, and the digests."""

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch

from bench.storage import atomic_save, atomic_write, bytes_digest, json_digest


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "ref.pt"
    atomic_save({"v": 1}, target)

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert torch.load(target)["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.pt"]


@pytest.mark.parametrize("shared", [False, True])
def test_concurrent_writers_of_one_file_each_use_their_own_temporary(tmp_path, shared):
    """Eight threads write the same target at once: every temporary name is distinct (a fixed `.partial` name made
    two writers rename each other's half-written file), and the file left is one writer's whole content."""
    target, names, barrier = tmp_path / "ref.bin", [], threading.Barrier(8)
    payloads = [bytes([i]) * 200_000 for i in range(8)]

    def writer(i: int) -> None:
        def write(tmp: Path) -> None:
            names.append(tmp.name)
            with open(tmp, "wb") as f:
                for k in range(0, len(payloads[i]), 10_000):
                    f.write(payloads[i][k : k + 10_000])

        barrier.wait()
        atomic_write(target, write, shared=shared)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8
    assert target.read_bytes() in payloads
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_digests_match_hashlib():
    spec = {"b": [1, 2], "a": "x"}
    assert json_digest(spec) == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    assert json_digest(spec, 12) == json_digest({"a": "x", "b": [1, 2]}, 12)  # key order does not matter
    assert bytes_digest(["ab", b"c"]) == hashlib.sha256(b"abc").hexdigest()
