"""benchmarks/coverage.py's cells: every registered explainer on every family either gives maps or is refused at
create with a message that names the model's class; the new families leave the model as they found it."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_vitx.explainers as X

ROOT = Path(__file__).resolve().parents[2]


def _load_coverage():
    spec = importlib.util.spec_from_file_location("lvx_coverage", ROOT / "benchmarks" / "coverage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


coverage = _load_coverage()
# the readouts and legrad (its own pass, through the same attention record): every attention family
READOUTS = [name for name in X.available() if X.get_info(name).readout or name == "legrad"]
NEW = ["eva", "eva02", "beit", "vit_relpos", "vit_relpos_rpn"]  # the families of issue 26's first slice
# Checked here only where CPU time is small: the existing families' cells are the contract tests' business.
CHECKED = [*NEW, "swinv2", "cait", "vit_map", "vit_hybrid"]
# they read token states of pre-norm blocks
NEEDS_PRE_NORM = {
    "vit_relpos_rpn": {"tokentm", "layernorm_stats"},
    "swinv2": {"tokentm", "layernorm_stats"},
    "cait": {"tokentm", "layernorm_stats"},  # class-attention blocks: no token states around them
}


@pytest.mark.parametrize("family", CHECKED)
def test_each_cell_gives_maps_or_is_refused_at_create(family):
    cells = coverage.coverage_cells([family])
    assert [cell.explainer for cell in cells] == X.available()
    failed = [cell for cell in cells if cell.status == "failed"]
    assert not failed, failed
    model = coverage.build(family)
    for cell in cells:
        if cell.status == "refused":
            assert type(model).__name__ in cell.message, cell
    if coverage.FAMILIES[family][2] == "refused":
        assert {cell.status for cell in cells} == {"refused"}
    else:  # every readout gives maps, unless the blocks cannot give what it reads (post-norm: token states)
        maps = {cell.explainer for cell in cells if cell.status == "maps"}
        assert maps == set(READOUTS) - NEEDS_PRE_NORM.get(family, set())


def test_a_refusal_names_an_explainer_that_works():
    model = coverage.build("eva02")
    with pytest.raises(TypeError, match=r"attnlrp cannot explain this timm\.models\.eva\.Eva.*Use one of \[") as error:
        X.create("attnlrp", model)
    suggested = str(error.value).split("Use one of [")[1].split("]")[0].replace("'", "").split(", ")
    assert set(suggested) == set(READOUTS)
    assert X.create(suggested[0], model)(coverage.images()).shape == (2, 4, 4)


def test_the_table_reads_the_cells():
    cells = [coverage.Cell("eva", "rollout", "maps"), coverage.Cell("eva", "lrp", "refused", "x: post-norm y")]
    assert coverage.table(cells).splitlines()[2:] == ["| `rollout` | maps |", "| `lrp` | refused: post-norm blocks |"]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("family", [*NEW, "vit_map", "cait", "swinv2"])
def test_the_model_is_left_as_found(family):
    model = coverage.build(family).train()
    fused = [m for m in model.modules() if hasattr(m, "fused_attn")]
    for index, module in enumerate(fused):
        module.fused_attn = bool(index % 2)  # a mix, so a restore to either value would show
    flags = [m.fused_attn for m in fused]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    hooks = _hooks(model)
    names = [name for name in READOUTS if name not in NEEDS_PRE_NORM.get(family, set())]
    maps = X.create_many(names, model)(coverage.images(), 1)
    assert set(maps) == set(names)
    assert [m.fused_attn for m in fused] == flags
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert _hooks(model) == hooks
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_the_readme_coverage_table_is_what_the_script_prints():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- coverage:begin -->\n", 1)[1].split("\n<!-- coverage:end -->", 1)[0]
    assert block == coverage.table(coverage.coverage_cells()), "rerun benchmarks/coverage.py and paste its table"
