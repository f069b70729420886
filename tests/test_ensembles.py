"""FreeTickets ensembles: the EDST jump, the phases, DST / EDST members, the ensemble metrics, CLI and compare."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayessparse.workflows.ensembles as ens
from bayessparse.batches import batches
from bayessparse.cli import main
from bayessparse.workflows.compare import parse_entry
from bayessparse.config import resolve
from bayessparse.errors import ConfigError
from bayessparse.files import load_torch
from bayessparse.sparsity import GradientGrow, MagnitudeDrop, MaskSet, MaskUpdater, UpdateSchedule
from bayessparse.train import build_run, load_finished, train_epoch

BASE = {"data": "digits", "model": "mlp", "sparsity": 0.8, "epochs": 3, "batch_size": 64, "lr": 0.05,
        "update_interval": 10}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def edst(tmp_path_factory):
    out = tmp_path_factory.mktemp("edst") / "ens"
    cfg = resolve(BASE, {"method": "rigl"})
    result = ens.ensemble(cfg, "edst", 3, out, dense_reference="none", progress=False)
    return cfg, out, result


@pytest.fixture(scope="module")
def dst(tmp_path_factory):
    out = tmp_path_factory.mktemp("dst") / "ens"
    cfg = resolve(BASE, {"method": "rigl", "epochs": 2, "seed": 4})
    result = ens.ensemble(cfg, "dst", 2, out, progress=False)
    return cfg, out, result


# ----------------------------------------------------------------------------- the jump


def test_jump_drops_80_percent_by_magnitude_and_grows_by_gradient():
    """Brute force on small layers: the k = floor(0.8 nnz) smallest |W| go, the k largest |g| outside come in."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))
    masks = MaskSet(model, {"0.weight": 0.5, "2.weight": 0.75}, generator=_gen(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 12)).sum().backward()
    masks.mask_grads_()
    opt.step()
    for name, w in masks.weights.items():
        opt.state[w]["momentum_buffer"].fill_(3.0)
        w.grad = torch.randn(w.shape, generator=_gen(len(name)))  # a dense gradient
    before = {n: (w.detach().clone(), masks.masks[n].clone(), w.grad.clone()) for n, w in masks.weights.items()}
    updater = MaskUpdater(masks, UpdateSchedule(100), MagnitudeDrop(), GradientGrow(), _gen(1))
    report = updater.jump(0.8, opt, drop=MagnitudeDrop(), grow=GradientGrow())
    assert updater.num_updates == 0 and report["fraction"] == 0.8
    for name, w in masks.weights.items():
        w0, m0, g = before[name]
        nnz = int(m0.sum())
        k = math.floor(0.8 * nnz)
        active = torch.nonzero(m0.flatten()).flatten()
        dropped = active[w0.flatten()[active].abs().argsort()[:k]]
        after_drop = m0.flatten().bool().clone()
        after_drop[dropped] = False
        inactive = torch.nonzero(~after_drop).flatten()
        grown = inactive[g.flatten()[inactive].abs().argsort(descending=True)[:k]]
        expected = after_drop.clone()
        expected[grown] = True
        new = masks.masks[name].flatten().bool()
        assert torch.equal(new, expected), name
        assert int(new.sum()) == nnz == masks.target_nnz[name]  # nnz exactly preserved
        assert torch.all(w.detach().flatten()[grown] == 0)  # grown weights start at 0 ...
        buf = opt.state[w]["momentum_buffer"].flatten()
        assert torch.all(buf[grown] == 0) and torch.all(buf[dropped] == 0)  # ... with no stale momentum
        # the surviving weights keep their values and momentum; everything outside the mask is 0
        assert torch.equal(w.detach().flatten()[after_drop], w0.flatten()[after_drop])
        assert torch.all(buf[after_drop] == 3.0)
        assert torch.all(w.detach().flatten()[~new] == 0)
        grown_mask = torch.zeros_like(new)
        grown_mask[grown] = True
        assert report["layers"][name] == int((grown_mask | (m0.flatten().bool() & ~new)).sum())
    with pytest.raises(ValueError, match="fraction"):
        updater.jump(0.0, opt)


def test_large_jump_on_a_run_uses_one_minibatch_dense_gradient():
    cfg = resolve(BASE, {"method": "rigl", "update_interval": 10_000})  # no scheduled update: no zero weights
    run = build_run(cfg)
    train_epoch(run, progress=False)
    state = run.generator.get_state()
    probe = copy.deepcopy(run.model)
    x, y = next(iter(batches(run.data.train, cfg.batch_size, shuffle=True, generator=torch.Generator().set_state(state))))
    F.cross_entropy(probe(x), y).backward()
    grads = {n: p.grad for n, p in probe.named_parameters()}
    masks = run.method.masks
    before = {n: (masks.weights[n].detach().clone(), masks.masks[n].clone()) for n in masks.sparse_layers()}
    ens.large_jump(run, 0.8)
    assert all(p.grad is None for p in run.model.parameters())
    for name, (w0, m0) in before.items():
        k = math.floor(0.8 * int(m0.sum()))
        g = grads[name].flatten()
        active = torch.nonzero(m0.flatten()).flatten()
        dropped = active[w0.flatten()[active].abs().argsort()[:k]]
        keep = m0.flatten().bool().clone()
        keep[dropped] = False
        inactive = torch.nonzero(~keep).flatten()
        grown = inactive[g[inactive].abs().argsort(descending=True)[:k]]
        keep[grown] = True
        assert torch.equal(masks.masks[name].flatten().bool(), keep), name
        assert int(masks.masks[name].sum()) == int(m0.sum())
        buf = run.optimizer.state[masks.weights[name]]["momentum_buffer"].flatten()
        assert torch.all(buf[grown] == 0) and torch.all(masks.weights[name].detach().flatten()[grown] == 0)


def test_edst_learning_rate_is_constant_then_reset_each_phase():
    cfg = resolve(BASE, {"epochs": 10})
    plan = ens.EDSTPlan.from_config(cfg, 3, refine_lr=0.01)
    assert (plan.explore_epochs, plan.refine_epochs, plan.total_epochs) == (6, 4, 18)
    assert [(p.start, p.end, p.member) for p in plan.phases] == [(0, 6, None), (6, 10, 0), (10, 14, 1), (14, 18, 2)]
    f = ens.edst_lr_factor(plan, cfg, steps_per_epoch=10)
    assert [f(t) for t in (0, 30, 59)] == [1.0, 1.0, 1.0]
    for start in (60, 100, 140):  # reset to refine_lr / lr at every refinement start, cosine within the phase
        assert f(start) == pytest.approx(0.2)
        assert f(start + 20) == pytest.approx(0.1)
        assert f(start + 39) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    step = ens.edst_lr_factor(plan, resolve(BASE, {"epochs": 10, "lr_schedule": "step"}), 10)
    assert [step(t) for t in (60, 79, 80, 89, 90, 100)] == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002, 0.2])
    assert ens.EDSTPlan.from_config(cfg, 3).refine_lr == cfg.lr


# ----------------------------------------------------------------------------- EDST end to end


def test_edst_members_have_distinct_masks_with_exact_nnz(edst):
    cfg, out, result = edst
    assert len(result["members"]) == 3
    assert (result["plan"]["explore_epochs"], result["plan"]["refine_epochs"]) == (2, 1)
    overlap = result["mask_overlap"]["matrix"]
    assert all(overlap[i][i] == 1.0 for i in range(3))
    assert all(overlap[i][j] < 0.95 for i in range(3) for j in range(3) if i != j)
    assert result["mask_overlap"]["mean"] < 0.95
    # every member keeps each layer's exact target nnz (ERK densities), through the scheduled updates and jumps
    run0 = build_run(cfg)
    targets = run0.method.masks.target_nnz
    for i in range(3):
        run, model = load_finished(out / f"member-{i}")
        assert run.method.masks.nnz() == targets
        for name, w in run.method.masks.weights.items():
            final_w = dict(model.named_parameters())[name]
            assert torch.all(final_w.detach()[run.method.masks.masks[name] == 0] == 0)
        metrics = json.loads((out / f"member-{i}" / "metrics.json").read_text())
        assert metrics["epochs"] == 2 + (i + 1) and metrics["member"] == i
    # the measured members are sparse and learned something
    assert all(r["accuracy"] > 0.6 and r["mask_density"] == pytest.approx(0.2, abs=0.01) for r in result["members"])
    # cost: one run of explore + 3 refine epochs at the mask density, relative to one dense 3-epoch run
    density = result["members"][0]["mask_density"]
    assert result["cost"]["epochs"] == 5
    assert result["cost"]["flops_proxy"] == pytest.approx(5 * density / 3)
    assert result["cost"]["train_seconds_ratio"] is None
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_edst_resumes_at_a_phase_boundary_bit_identically(edst, tmp_path, monkeypatch):
    cfg, out, _ = edst
    real_jump = ens.large_jump
    calls = {"n": 0}

    def crash_on_second_jump(run, fraction):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_jump(run, fraction)

    monkeypatch.setattr(ens, "large_jump", crash_on_second_jump)
    with pytest.raises(KeyboardInterrupt):
        ens.ensemble(cfg, "edst", 3, tmp_path / "ens", dense_reference="none", progress=False)
    assert (tmp_path / "ens" / "member-1" / "metrics.json").exists()
    assert not (tmp_path / "ens" / "member-2").exists()
    monkeypatch.setattr(ens, "large_jump", real_jump)
    resumed = ens.ensemble(cfg, "edst", 3, tmp_path / "ens", dense_reference="none", progress=False)
    for i in range(3):
        a = load_torch(out / f"member-{i}" / "checkpoint.pt")["final_model"]
        b = load_torch(tmp_path / "ens" / f"member-{i}" / "checkpoint.pt")["final_model"]
        assert all(torch.equal(a[k], b[k]) for k in a), i
    assert resumed["mask_overlap"]["matrix"] == edst[2]["mask_overlap"]["matrix"]
    with pytest.raises(ConfigError, match="different ensemble"):
        ens.ensemble(cfg, "edst", 2, tmp_path / "ens", dense_reference="none", progress=False)


@pytest.mark.parametrize("method", ["static", "set", "cigl"])
def test_edst_works_with_other_sparse_methods(method, tmp_path):
    cfg = resolve(BASE, {"method": method, "model": "cnn2d", "epochs": 2})
    result = ens.ensemble(cfg, "edst", 2, tmp_path / "e", dense_reference="none", progress=False)
    assert result["mask_overlap"]["matrix"][0][1] < 0.95  # the jump moved the mask, even for static training
    targets = build_run(cfg).method.masks.target_nnz
    for i in range(2):
        run, model = load_finished(tmp_path / "e" / f"member-{i}")
        assert run.method.masks.nnz() == targets
        params = dict(model.named_parameters())
        for name, m in run.method.masks.masks.items():  # CigL's phase average keeps the member's support
            assert torch.all(params[name].detach()[m == 0] == 0)
    if method == "cigl":
        assert run.method.average.count >= 1


# ----------------------------------------------------------------------------- the ensemble's numbers


def _brute_force_probs(model, dataset):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[None]).softmax(-1) for x, _ in dataset])


def test_ensemble_is_the_mean_of_member_softmax_on_the_whole_test_set(dst):
    cfg, out, result = dst
    members = [load_finished(out / f"member-{i}") for i in range(2)]
    test = members[0][0].data.test
    labels = test.tensors[1]
    probs = torch.stack([_brute_force_probs(model, run.data.test) for run, model in members])
    mean = probs.mean(0)
    saved = load_torch(out / "predictions.pt")
    assert saved["member_probs"].shape == (2, len(test), 10)
    assert torch.allclose(saved["member_probs"], probs, atol=1e-6)
    assert torch.allclose(ens.ensemble_probs(saved["member_probs"]), mean, atol=1e-6)
    e = result["ensemble"]
    assert e["n_test"] == len(test)
    assert e["accuracy"] == pytest.approx((mean.argmax(-1) == labels).double().mean().item())
    assert e["nll"] == pytest.approx(-mean[torch.arange(len(labels)), labels].double().log().mean().item(), rel=1e-5)
    brier = ((mean.double() - F.one_hot(labels, 10)) ** 2).sum(-1).mean().item()
    assert e["brier"] == pytest.approx(brier, rel=1e-5)
    for i, row in enumerate(result["members"]):  # per member: the whole test set, not one batch
        assert row["n_test"] == len(test)
        assert row["accuracy"] == pytest.approx((probs[i].argmax(-1) == labels).double().mean().item())
        nll = -probs[i][torch.arange(len(labels)), labels].double().log().mean().item()
        assert row["nll"] == pytest.approx(nll, rel=1e-5)
    agree = (probs[0].argmax(-1) == probs[1].argmax(-1)).double().mean().item()
    assert result["diversity"]["disagreement"] == pytest.approx(1 - agree)
    kl01 = (probs[0] * (probs[0].log() - probs[1].log())).sum(-1).mean()
    kl10 = (probs[1] * (probs[1].log() - probs[0].log())).sum(-1).mean()
    assert result["diversity"]["pairwise_kl"] == pytest.approx(((kl01 + kl10) / 2).item(), rel=1e-4)


def test_dst_members_are_independent_seeds_with_different_masks(dst):
    cfg, out, result = dst
    assert [r["seed"] for r in result["members"]] == [4, 5]
    assert [json.loads((out / f"member-{i}" / "metrics.json").read_text())["seed"] for i in range(2)] == [4, 5]
    overlap = result["mask_overlap"]["matrix"][0][1]
    assert overlap < 0.5  # two random ERK masks at density 0.2 share about 20 % (plus the ERK-dense parts)
    masks = [load_finished(out / f"member-{i}")[0].method.masks.masks for i in range(2)]
    inter = sum(int((masks[0][n].bool() & masks[1][n].bool()).sum()) for n in masks[0])
    assert overlap == pytest.approx(inter / sum(int(m.sum()) for m in masks[0].values()))
    cost = result["cost"]
    density = result["members"][0]["mask_density"]
    assert cost["flops_proxy"] == pytest.approx(2 * density, rel=1e-6) and cost["epochs"] == 4
    dense = json.loads((out / "dense-reference" / "metrics.json").read_text())
    assert dense["method"] == "dense" and dense["epochs"] == 2
    assert cost["train_seconds_ratio"] == pytest.approx(cost["train_seconds"] / dense["train_seconds"])
    assert result["name"] == "DST(RigL) x2"


def test_mask_overlap_definition():
    a = {"l": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}
    b = {"l": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}
    c = {"l": torch.tensor([1, 1, 1, 1], dtype=torch.bool)}
    o = ens.mask_overlap([a, b, c])
    assert o["matrix"] == [[1.0, 0.5, 1.0], [0.5, 1.0, 1.0], [0.5, 0.5, 1.0]]
    assert o["mean"] == pytest.approx((0.5 + 1 + 0.5 + 1 + 0.5 + 0.5) / 6)


# ----------------------------------------------------------------------------- CLI and compare


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--kind", "bagging"], "unknown ensemble kind 'bagging'"),
        (["--kind", "edst", "--members", "1"], "members must be an integer >= 2"),
        (["--kind", "edst", "--method", "dense"], "EDST needs a sparse method"),
        (["--kind", "dst", "--method", "rigl", "--explore-epochs", "3"], "apply to --kind edst only"),
        (["--kind", "edst", "--method", "rigl", "--refine-epochs", "0"], "refine_epochs"),
        (["--kind", "edst", "--method", "rigl", "--jump-fraction", "1.5"], "jump_fraction"),
        (["--kind", "edst", "--method", "lottery"], "unknown method 'lottery'"),
        (["--kind", "edst", "--method", "rigl", "--engine", "pyro"], "plain engine only"),
        (["--kind", "dst", "--model", "transformer"], "unknown model 'transformer'"),
        (["--kind", "dst", "--dense-reference", "no/such/run"], "--dense-reference"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "ens"
    code = main(["ensemble", "--data", "digits", "--model", "mlp", *flags, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err and err.startswith("bayessparse: error:")
    assert not out.exists()


def test_cli_requires_kind(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ensemble", "--out", "x"])
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_compare_entries():
    assert parse_entry("cigl").name == "cigl" and parse_entry("cigl").kind is None
    assert parse_entry("edst:rigl:3").name == "EDST(RigL) x3"
    assert parse_entry("dst:cigl:3").name == "DST(CigL) x3"
    assert parse_entry("dense:3") == parse_entry("dst:dense:3") and parse_entry("dense:3").name == "dense x3"
    assert parse_entry("edst:rigl:3").folder == "edst-rigl-x3"
    for bad, needle in [("edst:dense:3", "sparse"), ("edst:rigl:1", ">= 2"), ("boost:rigl:3", "kind"),
                        ("edst:rigl:x", ">= 2"), ("a:b:c:d", "bad --methods"), ("edst:lottery:3", "unknown method")]:
        with pytest.raises(ConfigError, match=needle):
            parse_entry(bad)


def test_compare_with_an_ensemble_entry(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--data", "digits", "--model", "mlp", "--methods", "edst:rigl:2", "--seeds", "1",
                 "--epochs", "2", "--out", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0 and "| EDST(RigL) x2 |" in stdout
    results = json.loads((out / "results.json").read_text())
    (record,) = results["runs"]
    saved = json.loads((out / "edst-rigl-x2" / "seed-0" / "ensemble.json").read_text())
    assert record["method"] == "EDST(RigL) x2" and record["accuracy"] == saved["ensemble"]["accuracy"]
    assert record["density"] == pytest.approx(sum(m["density"] for m in saved["members"]) / 2)
    assert record["train_seconds"] == saved["cost"]["train_seconds"]
    assert results["summary"]["EDST(RigL) x2"]["nll"]["mean"] == saved["ensemble"]["nll"]
    assert (out / "reliability-edst-rigl-x2.png").exists()
