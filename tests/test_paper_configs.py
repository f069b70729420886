"""The paper-scale CIFAR configs, ``experiments/cifar*.yaml``: valid, faithful to their paper, and trainable.

Every file the glob finds is covered, so a new CIFAR config is tested without touching this file. Its name
must be ``DATA_MODEL_KIND.yaml`` (e.g. ``cifar100_wrn-22-2_cigl.yaml``): KIND is the method of a CigL-table
config (Lei et al., ICLR 2023: ``cigl`` and its ``rigl`` baseline, 250 epochs, Nesterov SGD, ECE in 10 bins)
or ``edst`` for the FreeTickets EDST ensemble (Liu et al., ICLR 2022). For each config:

* the YAML has no duplicated key and resolves (an unknown / misspelt field or a bad value is a ConfigError);
* data, model and method agree with the file name, and the paper's settings are there;
* the command in its header comment parses with the real CLI and resolves with this file;
* one training step runs on CPU with random CIFAR-shaped tensors: the loss is finite, the prunable weights
  keep the configured density, pruned weights stay zero and some weight moves (``slow``: WRN-28-10 and
  ResNet-50 take a few seconds each on one thread).
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

import models
from bayessparse import cli
from bayessparse.config import TrainConfig, read_yaml, resolve
from bayessparse.data.bundle import DataBundle
from bayessparse.data.cifar import INPUT_SHAPE, SPECS, VAL_SIZE
from bayessparse.workflows.ensembles import EDSTPlan, edst_lr_factor
from bayessparse.errors import ConfigError
from bayessparse.methods import check_method
from bayessparse.sparsity.density import prunable_weights
from bayessparse.optim import lr_factor
from bayessparse.train import build_run, measured_density, train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("cifar*.yaml"))
IDS = [p.name for p in CONFIGS]

# What this file promises: the CigL table (2 datasets x 2 models x CigL / RigL) and FreeTickets' EDST.
EXPECTED = {
    f"{data}_{model}_{method}.yaml"
    for data in ("cifar10", "cifar100")
    for model in ("resnet50", "wrn-22-2")
    for method in ("cigl", "rigl")
} | {"cifar10_wrn-28-10_edst.yaml"}

CIGL_ONLY = ("method", "drop_rate", "averaging_start")  # what may differ between a CigL config and its RigL twin
STEPS_PER_EPOCH = -(-(50_000 - VAL_SIZE) // 128)  # 45,000 CIFAR training images in batches of 128: 352
BATCH = 2  # examples in the CPU training step (BatchNorm needs more than one)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys silently; this loader refuses them."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicated = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicated:
        raise yaml.constructor.ConstructorError(None, None, f"duplicated keys {duplicated}", node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load(path: Path) -> TrainConfig:
    """The config as ``bayessparse train --config PATH`` resolves it, after a duplicate-key check."""
    yaml.load(path.read_text(), Loader=_StrictLoader)
    return resolve(read_yaml(path))


def kind_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[-1]


def name_parts(path: Path) -> tuple[str, str, str]:
    parts = path.stem.split("_")
    assert len(parts) == 3, f"{path.name}: name must be DATA_MODEL_KIND.yaml"
    return parts[0], parts[1], parts[2]


def header_commands(path: Path) -> list[list[str]]:
    """The ``bayessparse ...`` commands of the leading comment block (``\\``-continued lines joined)."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    commands, current = [], ""
    for line in header:
        if current or line.startswith("bayessparse "):
            current += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(shlex.split(current)[1:])  # without the program name
                current = ""
    return commands


def parse(argv: list[str]):
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the header command does not parse: bayessparse {shlex.join(argv)}")


def random_bundle(data: str, n: int, seed: int = 0) -> DataBundle:
    """CIFAR-shaped random tensors with ``data``'s number of classes (real CIFAR is never needed here)."""
    k = SPECS[data].num_classes
    g = torch.Generator().manual_seed(seed)

    def split() -> TensorDataset:
        return TensorDataset(torch.randn(n, *INPUT_SHAPE, generator=g), torch.randint(0, k, (n,), generator=g))

    return DataBundle(name=data, train=split(), val=split(), test=split(), num_classes=k, input_shape=INPUT_SHAPE)


# --------------------------------------------------------------------------- the set of files


def test_the_paper_configs_are_all_there():
    assert EXPECTED <= set(IDS), f"missing: {sorted(EXPECTED - set(IDS))}"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("_cigl")], ids=lambda p: p.name)
def test_each_cigl_config_has_a_rigl_twin_that_differs_only_in_the_method(path):
    twin = path.with_name(path.name.replace("_cigl.yaml", "_rigl.yaml"))
    assert twin.is_file(), f"{path.name} has no RigL baseline {twin.name}"
    cigl, rigl = load(path).to_dict(), load(twin).to_dict()
    differ = sorted(k for k in cigl if cigl[k] != rigl[k] and k not in CIGL_ONLY)
    assert not differ, f"{path.name} and {twin.name} differ in {differ}"
    assert (cigl["method"], rigl["method"]) == ("cigl", "rigl")


# --------------------------------------------------------------------------- validity and paper settings


def test_a_mistake_in_a_config_is_caught(tmp_path):
    text = (ROOT / "experiments" / "cifar10_resnet50_cigl.yaml").read_text()
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(text.replace("lr_schedule:", "lr_schedul:"))
    with pytest.raises(ConfigError, match="unknown config field 'lr_schedul'"):
        load(misspelt)
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text(text.replace("lr_schedule: step", "lr_schedule: stpe"))
    with pytest.raises(ConfigError, match="lr_schedule"):
        load(bad_value)
    duplicated = tmp_path / "duplicated.yaml"
    duplicated.write_text(text + "sparsity: 0.95\n")
    with pytest.raises(yaml.YAMLError, match="duplicated keys"):
        load(duplicated)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_validates_and_matches_its_file_name(path):
    cfg = load(path)
    data, model, kind = name_parts(path)
    assert cfg.data == data and data in SPECS
    assert cfg.model == model and model in models.MODELS
    check_method(cfg.method)
    assert cfg.method == ("rigl" if kind == "edst" else kind)
    assert cfg.data_root is not None  # a placeholder: the header says to pass --data-root
    assert cfg.layer_density == "erk"
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum) == (250, 128, 0.1, 0.9)
    assert cfg.warmup_epochs == 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if kind_of(p) != "edst"], ids=lambda p: p.name)
def test_cigl_table_settings(path):
    """Lei et al. 2023, §5: 250 epochs, batch 128, SGD (Nesterov, 0.9), lr 0.1 with piecewise-constant decay,
    weight decay 1e-4, RigL's ERK mask schedule, 90 % sparsity, ECE with 10 bins; CigL drops 1 % per step."""
    cfg = load(path)
    assert cfg.nesterov is True
    assert cfg.weight_decay == pytest.approx(1e-4)
    assert cfg.sparsity == pytest.approx(0.9)
    assert (cfg.update_interval, cfg.update_alpha, cfg.update_end) == (100, 0.3, 0.75)
    assert cfg.ece_bins == 10
    assert cfg.lr_schedule == "step"
    factor = lr_factor(cfg, STEPS_PER_EPOCH)  # x 0.2 after 30,000 and 60,000 of the 88,000 steps
    assert [factor(t) for t in (0, 29_999, 30_000, 59_999, 60_000, 87_999)] == pytest.approx(
        [1.0, 1.0, 0.2, 0.2, 0.04, 0.04]
    )
    if cfg.method == "cigl":
        assert cfg.drop_rate == pytest.approx(0.01)
        assert cfg.averaging_start == pytest.approx(0.8)


@pytest.mark.parametrize("path", [p for p in CONFIGS if kind_of(p) == "edst"], ids=lambda p: p.name)
def test_freetickets_edst_settings_and_schedule(path):
    """Liu et al. 2022, reference main_EDST.py: density 0.2, SGD(0.9) without Nesterov, weight decay 5e-4,
    mask updates every 1000 steps at rate 0.5; lr 0.1 while exploring, then 0.01 -> 0.001 in every phase."""
    cfg = load(path)
    assert cfg.model == "wrn-28-10"
    assert cfg.sparsity == pytest.approx(0.8)
    assert cfg.nesterov is False
    assert cfg.weight_decay == pytest.approx(5e-4)
    assert (cfg.update_interval, cfg.update_alpha) == (1000, 0.5)
    (argv,) = [c for c in header_commands(path) if c[0] == "ensemble"]
    args = parse(argv)
    assert (args.kind, args.members, args.explore_epochs, args.refine_epochs) == ("edst", 3, 150, 100)
    plan = EDSTPlan.from_config(cfg, args.members, args.explore_epochs, args.refine_epochs, args.refine_lr)
    assert plan.total_epochs == 450  # the reference script's --epochs 450
    spe = STEPS_PER_EPOCH
    lr = edst_lr_factor(plan, cfg, spe)
    phase = 100 * spe
    at = {"explore": 0, "explore end": 150 * spe - 1}
    for i in range(3):
        start = (150 + 100 * i) * spe
        at[f"phase {i} start"], at[f"phase {i} half"], at[f"phase {i} end"] = start, start + phase // 2, start + phase - 1
    got = {k: cfg.lr * lr(t) for k, t in at.items()}
    want = {k: 0.1 if k.startswith("explore") else 0.01 if k.endswith("start") else 0.001 for k in at}
    assert got == pytest.approx(want)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_header_says_what_it_reproduces_and_its_command_runs_this_file(path):
    text = path.read_text()
    assert text.startswith("# "), "the header comment must come first"
    assert re.search(r"ICLR 202[23]", text.split("\n\n")[0]), "the header must name the paper"
    commands = header_commands(path)
    assert commands, "the header must give the command that runs the config"
    for argv in commands:
        args = parse(argv)
        assert args.config is not None and (ROOT / args.config).resolve() == path.resolve()
        assert args.data_root is not None, "the command must point --data-root at the CIFAR files"
        assert args.out is not None
        args.config = ROOT / args.config
        resolve(*cli._config_layers(args))  # the file plus the command's flags must validate together
    kinds = {argv[0] for argv in commands}
    assert kinds == ({"ensemble"} if kind_of(path) == "edst" else {"train"})


# --------------------------------------------------------------------------- one training step on CPU


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_one_training_step_on_random_cifar_shaped_data(path):
    cfg = load(path)
    bundle = random_bundle(cfg.data, BATCH)
    run = build_run(cfg.replace(batch_size=BATCH, device="cpu"), data=bundle)
    linears = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[-1].out_features == SPECS[cfg.data].num_classes  # never a 100-way head for CIFAR-10
    weights = prunable_weights(run.model)
    masks = run.method.masks.masks  # M of every sparse method (an active weight may still be an exact 0 at init)
    assert measured_density(run.model) == pytest.approx(1.0 - cfg.sparsity, abs=1e-3)
    before = {name: w.detach().clone() for name, w in weights.items()}

    x, y = bundle.train.tensors
    loss = train_step(run, x, y)

    assert math.isfinite(loss)
    assert run.step == 1
    assert measured_density(run.model) == pytest.approx(1.0 - cfg.sparsity, abs=1e-3)
    for name, w in weights.items():  # step 0 is never a mask update: pruned weights stay exactly zero
        assert not w.detach()[masks[name] == 0].any(), f"{name}: a pruned weight became non-zero"
    moved = [name for name, w in weights.items() if not torch.equal(w.detach(), before[name])]
    assert moved, "no prunable weight changed in the training step"
