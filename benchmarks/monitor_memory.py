"""Peak memory the monitor adds to one validation epoch, against the held-out set's size, printed as a table.

    python benchmarks/monitor_memory.py [--samples 64 384] [--batch-size 16]

Each setting runs in its own process (peak RSS only grows): validate the demo's tiny ViT (64 px) once without
the monitor, then with it (rollout, gradcam, gmar; deletion, insertion, pointing game), and report the peak
resident memory added by the monitor, and that less the held-out set it keeps (52 KiB a sample, on the CPU).
With every pass bounded by ``batch_size``, that working memory should not move with ``num_samples``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(num_samples: int, batch_size: int, with_monitor: bool) -> float:
    """Peak RSS in MiB above the RSS before validation, in a fresh process."""
    code = f"""
import json, resource, torch, lightning as L
from torch.utils.data import DataLoader
from lightning_vitx.callbacks import ExplainabilityMonitor
from lightning_vitx.classification import TimmClassifier
from lightning_vitx.data import ShapesDataset

torch.set_num_threads(2)
module = TimmClassifier("vit_tiny_patch16_224", num_classes=3,
    model_kwargs={{"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}})
loader = DataLoader(ShapesDataset({num_samples}, 64, seed=1, distractors=2), batch_size={batch_size})
callbacks = [ExplainabilityMonitor(explainers=["rollout", "gradcam", "gmar"],
    metrics=["deletion", "insertion", "pointing_game"], num_samples={num_samples}, batch_size={batch_size})]
trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
    enable_model_summary=False, callbacks=callbacks if {with_monitor} else [])
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
trainer.validate(module, loader, verbose=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(peak - before))
"""
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 384])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for num_samples in args.samples:
        plain = measure(num_samples, args.batch_size, with_monitor=False)
        watched = measure(num_samples, args.batch_size, with_monitor=True)
        held_out = num_samples * (3 * 64 * 64 * 4 + 64 * 64 + 8) / 2**20  # images, bool masks, labels
        rows.append((num_samples, plain, watched, watched - plain, held_out))
    print(f"batch_size={args.batch_size}; peak RSS above the RSS before validation, MiB")
    header = ["num_samples", "validation", "+ monitor", "monitor adds", "held-out set", "working memory"]
    print(" ".join(f"{h:>14}" for h in header))
    for num_samples, plain, watched, added, held_out in rows:
        cells = [plain, watched, added, held_out, added - held_out]
        print(f"{num_samples:>14} " + " ".join(f"{c:>14.1f}" for c in cells))
    (n0, *_, added0, kept0), (n1, *_, added1, kept1) = rows[0], rows[-1]
    print(
        f"{n1} vs {n0} samples: monitor adds {added1 / added0:.2f}x; working memory (without the held-out set "
        f"it must keep) {(added1 - kept1) / (added0 - kept0):.2f}x"
    )


if __name__ == "__main__":
    main()
