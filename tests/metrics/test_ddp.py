"""Two CPU processes (gloo), each on its shard, give the same compute() as one process on all samples."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, out: Path) -> None:
    port = str(free_port())
    processes = []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        processes.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env))
    try:
        for process in processes:
            assert process.wait() == 0  # a hang is stopped by the suite-wide timeout (pyproject.toml)
    finally:
        for process in processes:
            process.kill()


def test_two_process_ddp_equals_one_process(tmp_path):
    run(1, tmp_path / "single.pt")
    run(2, tmp_path / "ddp.pt")
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert set(single) == set(ddp) and len(single) == 7
    for name in single:
        for key in single[name]:
            torch.testing.assert_close(ddp[name][key], single[name][key], rtol=0, atol=1e-6, msg=f"{name}/{key}")
