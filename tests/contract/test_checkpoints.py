"""The coordinator's half of checkpoints works without torch: commit, find, prune."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Rank files written as plain bytes (any content: the contract checks sizes and digests).
SCRIPT = """
import sys
sys.modules["torch"] = None
sys.modules["safetensors"] = None
from pathlib import Path
from rlhf_operator.contract import checkpoints as ckpt

root = Path(sys.argv[1])
for iteration in (1, 2, 3):
    directory = ckpt.make_checkpoint_dir(root, iteration)
    manifest = {}
    for rank in range(2):
        for name in (ckpt.tensor_file(rank), ckpt.meta_file(rank)):
            manifest[name] = ckpt.write_atomic(directory / name, f"{iteration}/{name}".encode())
    if iteration < 3:
        ckpt.commit(root, iteration, manifest, 2)
print(ckpt.latest_complete(root).iteration)
print([p.name for p in ckpt.retain(root, keep=1)])
print([i for i, _ in ckpt.iteration_dirs(root)])
"""


def test_commit_find_and_retain_without_torch(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Iteration 3 was never committed: 2 is the newest complete one; retention keeps it
    # and leaves 3 alone (a save that may still be in progress).
    assert done.stdout.splitlines() == ["2", "['iter-00000001']", "[2, 3]"]
