"""The model-parameter randomisation test (analysis.randomization_check) on the tests' trained ViT and Swin.

    python benchmarks/sanity.py                  # prints the README's sanity block (markdown), ~15 s on CPU
    python benchmarks/sanity.py --write-readme   # and writes it between the README's sanity markers
    python benchmarks/sanity.py --figure out.png

Loads the committed weights of the trained fixtures (tests/fixtures/shapes_{vit,swin}_seed0.pt, written by
`make fixtures`), explains held-out shapes (the tests' held-out seed, 20000) with every explainer that takes the
model, re-draws the head and then the blocks from the top (cumulatively), and prints per explainer the mean
per-image Spearman between the trained model's maps and the randomised model's, with the two-random-models floor
and a one-line verdict. tests/benchmarks/test_sanity_readme.py checks that the README's block is this output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lightning_vitx.explainers as X
from lightning_vitx.analysis import RandomizationResult, randomization_check
from lightning_vitx.data import SHAPES_IMAGE_SIZES, ShapesDataset, tiny_swin_for_shapes, tiny_vit_for_shapes

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BEGIN, END = "<!-- sanity:begin (python benchmarks/sanity.py --write-readme) -->", "<!-- sanity:end -->"
IGNORES_LEARNING = 0.5  # Spearman with every block re-drawn above which a map does not follow the weights


def trained(kind: str) -> torch.nn.Module:
    size = SHAPES_IMAGE_SIZES[kind]
    model = (tiny_swin_for_shapes if kind == "swin" else tiny_vit_for_shapes)(size, seed=0)
    model.load_state_dict(torch.load(FIXTURES / f"shapes_{kind}_seed0.pt", weights_only=True))
    return model.eval()


def verdict(values: list[float], floor: float) -> str:
    head, last = values[0], values[-1]
    if last != last:  # NaN: every map constant
        return "no ranking: the maps are constant"
    if last >= IGNORES_LEARNING:
        text = f"fails: with every block re-drawn the maps still follow the trained ones (ρ {last:.2f})"
    elif last <= max(floor, 0.0) + 0.1:
        text = "passes: falls to the random-model floor once the blocks are re-drawn"
    else:
        text = f"passes, partly: ρ {last:.2f} with every block re-drawn, floor {floor:.2f}"
    if floor >= IGNORES_LEARNING:
        text += f"; two random models give nearly the same map (floor {floor:.2f}): its layout is the architecture's"
    if head > 0.99:
        text += "; ignores the head (the same map for every class)"
    return text


def block(kind: str, result: RandomizationResult, samples: int) -> str:
    lines = [f"**{kind}** (trained tiny {kind}, {samples} held-out images, cascading from the head):", ""]
    lines.append(result.table())
    lines.append("")
    lines += [f"- `{name}`: {verdict(values, result.floor[name])}" for name, values in result.correlations.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-drawn weights")
    parser.add_argument("--figure", type=Path, default=None, help="save each model's figure as <stem>-<kind>.png")
    parser.add_argument("--write-readme", action="store_true", help="write the block into README.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    blocks = []
    for kind in ("vit", "swin"):
        model = trained(kind)
        held_out = ShapesDataset(args.samples, SHAPES_IMAGE_SIZES[kind], seed=20_000)
        images = torch.stack([held_out[i][0] for i in range(args.samples)])
        names = [name for name in X.available() if kind in X.get_info(name).families]
        result = randomization_check(model, images, names, seed=args.seed)
        blocks.append(block(kind, result, args.samples))
        print(blocks[-1], end="\n\n")
        if args.figure is not None:
            result.figure().savefig(args.figure.with_name(f"{args.figure.stem}-{kind}.png"), dpi=100)

    if args.write_readme:
        readme = (ROOT / "README.md").read_text()
        before, rest = readme.split(BEGIN)
        _, after = rest.split(END)
        (ROOT / "README.md").write_text(before + BEGIN + "\n" + "\n\n".join(blocks) + "\n" + END + after)


if __name__ == "__main__":
    main()
