"""Trains one of the tests' two tiny models (tests/conftest.py), in a process of its own while the suite runs on.

conftest starts it, on one thread (so its run is the same every time), as soon as the collected tests include one
that requests the model, and the fixture loads what it saved. By hand: ``python tests/fixture_training.py swin
--seed 0 --out swin.pt``.
"""

from __future__ import annotations

import argparse

import torch

from lightning_vitx.data import trained_on_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["vit", "swin"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--target-accuracy", type=float, default=0.85)
    parser.add_argument("--out", required=True, help="where to save the state dict")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = trained_on_shapes(args.kind, args.seed, args.max_steps, args.target_accuracy)
    torch.save(run.model.state_dict(), args.out)
    print(f"trained the tiny {args.kind} of seed {args.seed}: {run.steps} steps, held-out accuracy {run.accuracy:.3f}")


if __name__ == "__main__":
    main()
