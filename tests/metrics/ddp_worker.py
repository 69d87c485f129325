"""Run by test_ddp.py: every metric over a rank's shard (uneven: 5 and 3 samples), compute() synced by torchmetrics."""

import os
import sys

import timm
import torch
import torch.distributed as dist

import lightning_vitx.metrics as M


def main(out_path: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3
    ).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    maps = torch.rand(8, 4, 4, generator=generator)
    masks = torch.rand(8, 32, 32, generator=generator) > 0.7
    target = torch.randint(3, (8,), generator=generator)
    shard = slice(0, 8) if world == 1 else (slice(0, 5) if rank == 0 else slice(5, 8))
    results = {}
    for name in M.available():
        options = {"steps": 4} if name in ("deletion", "insertion") else {}
        metric = M.create(name, **options)
        metric.update(model, images[shard], maps[shard], target[shard], masks[shard])
        results[name] = {key: value.cpu() for key, value in metric.compute().items()}  # every rank calls compute
    if rank == 0:
        torch.save(results, out_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
