"""The study's report: Markdown tables with 95 % confidence intervals, verdicts, and the figures.

Every number comes from the cells' scores (``study.json`` of each folder, see
:mod:`bayessparse.workflows.study.cells`); nothing is typed in. Intervals are over seeds
(:mod:`bayessparse.stats`); differences between methods are paired by seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bayessparse.config import TrainConfig, resolve
from bayessparse.stats import Interval, interval, paired_difference
from bayessparse.tasks import CLASSIFICATION, REGRESSION, Task
from bayessparse.workflows.study.plan import deep_gp_cells, deep_gp_groups, freetickets_cells, imp_cells, row_cell
from bayessparse.workflows.study.rows import ROWS
from bayessparse.workflows.study.spec import StudySpec

Scores = dict[str, dict[str, Any]]
#: the acceptance rule for CigL's defaults (issue text and docs/results.md)
ECE_RATIO_TARGET = 0.5
ACCURACY_SLACK = 0.003


class Report:
    """Collects Markdown blocks and figure paths while the sections read the scores."""

    def __init__(self, spec: StudySpec, root: Path, scores: Scores, figures: Path, command: str) -> None:
        self.spec, self.root, self.scores, self.figures, self.command = spec, root, scores, figures, command
        self.blocks: list[str] = []
        self.files: list[Path] = []
        self.verdicts: list[tuple[str, str]] = []  # (claim, verdict) for the summary at the top

    def claim(self, what: str, result: str) -> str:
        self.verdicts.append((what, result))
        return result

    def add(self, *paragraphs: str) -> None:
        self.blocks.append("\n\n".join(paragraphs))  # a table needs a blank line before it to render

    def figure(self, name: str) -> Path:
        path = self.figures / name
        self.files.append(path)
        return path

    def link(self, path: Path, alt: str) -> str:
        return f"![{alt}](figures/{path.name})"

    def row_values(self, setup: str, row: str, sparsity: float, key: Callable[[dict], float], **changes) -> list[float]:
        """One value per seed of ``row`` (its prediction's card) at ``sparsity``."""
        out = []
        for seed in self.spec.seeds:
            cell = row_cell(self.spec, self.root, setup, row, sparsity, seed, **changes)
            out.append(key(self.scores[cell.folder][ROWS[row].predict]))
        return out

    def text(self) -> str:
        summary = ["## Verdicts", "Each claim and its verdict from the sections below: *reproduced* means every tested setting "
                   "shows the claimed direction with a 95 % interval that excludes zero, *partly* that some do, "
                   "*not reproduced* that none does (or that the opposite is resolved).",
                   table(["claim", "verdict"], [[what, result] for what, result in self.verdicts])]
        blocks = self.blocks[:1] + (["\n\n".join(summary)] if self.verdicts else []) + self.blocks[1:]
        return "\n\n".join(blocks) + "\n"


def test_metric(name: str) -> Callable[[dict], float]:
    if name == "overconfidence":
        return lambda card: card["test"]["confidence"] - card["test"]["accuracy"]
    return lambda card: card["test"][name]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(intervals: Sequence[Interval], better: Callable[[Interval], bool]) -> str:
    """``reproduced`` when every interval shows the claim with confidence, ``partly`` when some do."""
    shown = [i.excludes_zero() and better(i) for i in intervals]
    against = [i.excludes_zero() and not better(i) for i in intervals]
    if all(shown):
        return "**reproduced**"
    if any(shown):
        return "**partly reproduced**"
    return "**not reproduced** (the opposite holds)" if any(against) else "**not reproduced** (no difference resolved)"


def _pct(x: float) -> str:
    return f"{x:g}"


# ------------------------------------------------------------------------------------------ calibration


METRICS = (("accuracy", "accuracy", 4), ("ece", "ECE", 4), ("nll", "NLL", 4), ("brier", "Brier", 4),
           ("overconfidence", "confidence − accuracy", 4))


def calibration_section(rep: Report) -> None:
    c = rep.spec.calibration
    if c is None:
        return
    rep.add("## Calibration across sparsity (CigL's claims)",
            f"Rows: {', '.join(f'{ROWS[r].label} ({ROWS[r].about})' for r in c.rows)}. "
            f"Each cell is the mean ± 95 % CI over seeds {', '.join(map(str, rep.spec.seeds))}; dense has no "
            "sparsity and is repeated in every column. `confidence − accuracy` > 0 is over-confidence.")
    for setup, fields in c.setups.items():
        cfg = rep.spec.config(setup)
        rep.add(f"### {setup}: {cfg.data}, {cfg.model}{_width(cfg)}, {cfg.epochs} epochs",
                _train_command(rep.spec, setup))
        for key, label, digits in METRICS:
            rows = []
            for row in c.rows:
                cells = [interval(rep.row_values(setup, row, s, test_metric(key))).format(digits) for s in c.sparsities]
                rows.append([ROWS[row].label, *cells])
            rep.add(f"**{label}**", table(["method", *[f"{_pct(s)}" for s in c.sparsities]], rows))
        diffs = _paired_table(rep, setup, "cigl", "rigl", c.sparsities)
        ece = rep.claim(f"CigL better calibrated than RigL (ECE), {setup}",
                        verdict([d["d_ece"] for d in diffs], lambda i: i.mean < 0))
        acc = rep.claim(f"CigL more accurate than RigL, {setup}",
                        verdict([d["d_acc"] for d in diffs], lambda i: i.mean > 0))
        over = [paired_difference(rep.row_values(setup, "rigl", s, test_metric("overconfidence")),
                                  rep.row_values(setup, "dense", s, test_metric("overconfidence"))) for s in c.sparsities]
        sparse_over = rep.claim(f"RigL more over-confident than dense, {setup}", verdict(over, lambda i: i.mean > 0))
        rep.add(f"Verdicts, {setup}: lower ECE than RigL {ece}; higher accuracy than RigL {acc}; "
                f"RigL more over-confident (confidence − accuracy) than dense {sparse_over}.")
        _sparsity_plot(rep, setup)


def _width(cfg: TrainConfig) -> str:
    return "" if cfg.width == 1.0 else f" (width {cfg.width:g})"


def _train_command(spec: StudySpec, setup: str) -> str:
    fields = {**spec.base, **spec.calibration.setups[setup]}
    sets = " ".join(f"--set {k}={v}" for k, v in fields.items())
    return f"One cell: `bayessparse train {sets} --method METHOD --sparsity S --seed K --out RUN` (then the row's prediction)."


def target_check(acc: list[float], ece: list[float], ref_acc: list[float], ref_ece: list[float]) -> dict[str, Any]:
    """The defaults' acceptance rule against a reference at the same seeds: the paired accuracy
    difference, the ratio of mean ECEs, and whether ratio ≤ ECE_RATIO_TARGET at Δacc ≥ −ACCURACY_SLACK."""
    d_acc = paired_difference(acc, ref_acc)
    ratio = interval(ece).mean / max(interval(ref_ece).mean, 1e-12)
    return {"d_acc": d_acc, "ratio": ratio, "meets": ratio <= ECE_RATIO_TARGET and d_acc.mean >= -ACCURACY_SLACK}


def _paired_table(rep: Report, setup: str, a: str, b: str, sparsities: Sequence[float]) -> list[dict]:
    """Paired differences ``a − b`` per sparsity: accuracy, ECE, NLL, and the ECE ratio; returns them."""
    rows, out = [], []
    for s in sparsities:
        va, vb = ({m: rep.row_values(setup, r, s, test_metric(m)) for m in ("accuracy", "ece", "nll")} for r in (a, b))
        check = target_check(va["accuracy"], va["ece"], vb["accuracy"], vb["ece"])
        d_ece, d_nll = paired_difference(va["ece"], vb["ece"]), paired_difference(va["nll"], vb["nll"])
        out.append({"sparsity": s, "d_ece": d_ece, "d_nll": d_nll, **check})
        rows.append([_pct(s), check["d_acc"].format(4), d_ece.format(4), d_nll.format(4), f"{check['ratio']:.2f}",
                     "yes" if check["meets"] else "no"])
    name_a, name_b = ROWS[a].label, ROWS[b].label
    rep.add(f"**Paired difference {name_a} − {name_b}** (same seeds; an interval that excludes 0 is a resolved "
            f"difference; target: ECE ratio ≤ {ECE_RATIO_TARGET} at Δaccuracy ≥ −{ACCURACY_SLACK * 100:g} points)",
            table(["sparsity", "Δ accuracy", "Δ ECE", "Δ NLL", "ECE ratio", "target met"], rows))
    return out


def _sparsity_plot(rep: Report, setup: str) -> None:
    from bayessparse.plots.study import plot_panels

    c = rep.spec.calibration
    panels = []
    for key, label in (("ece", "ECE"), ("accuracy", "accuracy")):
        series = {ROWS[r].label: [(s, interval(rep.row_values(setup, r, s, test_metric(key)))) for s in c.sparsities]
                  for r in c.rows}
        panels.append((label, series))
    path = rep.figure(f"sparsity-{setup}.svg")
    plot_panels(panels, path, "sparsity", f"{setup}: ECE and accuracy vs sparsity (mean, 95 % CI)",
                xticks=c.sparsities)
    rep.add(rep.link(path, f"ECE and accuracy vs sparsity, {setup}"))


# ------------------------------------------------------------------------------------------ reliability


def reliability_section(rep: Report, predictions: Callable[[str, str, float, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    c = rep.spec.calibration
    if c is None or c.reliability is None:
        return
    from bayessparse.uncertainty.reliability import plot_reliability_overlay

    setup, s = c.reliability
    curves = {}
    for row in c.rows:
        preds = [predictions(setup, row, s, seed) for seed in rep.spec.seeds]
        curves[ROWS[row].label] = (torch.cat([p for p, _ in preds]), torch.cat([y for _, y in preds]))
    cfg = rep.spec.config(setup)
    path = rep.figure(f"reliability-{setup}-{_pct(s)}.svg")
    plot_reliability_overlay(curves, path, n_bins=cfg.ece_bins, title=f"{setup} at sparsity {_pct(s)} (seeds pooled)")
    rep.add(f"### Reliability diagrams, {setup} at {_pct(s)} sparsity", rep.link(path, "reliability overlay"))


# ------------------------------------------------------------------------------------------ corruptions


def corruption_section(rep: Report) -> None:
    c = rep.spec.calibration
    if c is None or not c.corruptions:
        return
    from bayessparse.plots.study import plot_panels

    rep.add("## Under corruption (severities 1-5)",
            "Mean over the corruption types of the dataset's suite (bayessparse.data.corruptions), then mean ± 95 % CI "
            "over seeds. Temperature scaling is fitted on clean validation data, which is where it is known to help least.")
    for setup in c.corruptions:
        s = c.reliability[1] if c.reliability and c.reliability[0] == setup else c.sparsities[len(c.sparsities) // 2]
        series: dict[str, dict[str, list]] = {"accuracy": {}, "ECE": {}, "NLL": {}, "Brier": {}}
        for key, label, _ in METRICS[:4]:
            rows = []
            for row in c.rows:
                per_sev = []
                for sev in range(5):
                    vals = rep.row_values(setup, row, s, lambda card, k=key, i=sev: card["corruptions"][i][k])
                    per_sev.append(interval(vals))
                series[label][ROWS[row].label] = [(i + 1, iv) for i, iv in enumerate(per_sev)]
                clean = interval(rep.row_values(setup, row, s, test_metric(key)))
                rows.append([ROWS[row].label, clean.format(4), *[iv.format(4) for iv in per_sev]])
            rep.add(f"**{setup} at {_pct(s)} sparsity: {label}**",
                    table(["method", "clean", "sev 1", "sev 2", "sev 3", "sev 4", "sev 5"], rows))
        path = rep.figure(f"corruptions-{setup}.svg")
        plot_panels([("ECE", series["ECE"]), ("accuracy", series["accuracy"])], path, "severity",
                    f"{setup} at sparsity {_pct(s)}: corruptions", xticks=[1, 2, 3, 4, 5])
        rep.add(rep.link(path, f"ECE vs corruption severity, {setup}"))


# ------------------------------------------------------------------------------------------ drop rate


def drop_rate_section(rep: Report, default_rate: float) -> None:
    d = rep.spec.drop_rate
    if d is None:
        return
    from bayessparse.plots.study import plot_panels

    rep.add("## CigL's drop rate: the evidence for the default",
            f"Sweep of the drop rate (1 − p) × sparsity; RigL is the reference at the same seeds. The acceptance rule: "
            f"ECE(CigL) ≤ {ECE_RATIO_TARGET} × ECE(RigL) at accuracy ≥ RigL − {ACCURACY_SLACK * 100:g} points. "
            f"The library's default drop rate is **{default_rate:g}** (bayessparse.config.TrainConfig.drop_rate).")
    found = []
    for setup in d.setups:
        rows = []
        series: dict[str, dict[str, list]] = {"ECE": {}, "accuracy": {}}
        for s in d.sparsities:
            rigl_acc = rep.row_values(setup, "rigl", s, test_metric("accuracy"))
            rigl_ece = rep.row_values(setup, "rigl", s, test_metric("ece"))
            series["ECE"].setdefault("RigL", []).append((s, interval(rigl_ece)))
            series["accuracy"].setdefault("RigL", []).append((s, interval(rigl_acc)))
            rows.append([_pct(s), "RigL", interval(rigl_acc).format(4), interval(rigl_ece).format(4), "", "", ""])
            for r in d.rates:
                acc = rep.row_values(setup, "cigl", s, test_metric("accuracy"), drop_rate=r)
                ece = rep.row_values(setup, "cigl", s, test_metric("ece"), drop_rate=r)
                check = target_check(acc, ece, rigl_acc, rigl_ece)
                d_acc, ratio, meets = check["d_acc"], check["ratio"], check["meets"]
                found.append({"setup": setup, "sparsity": s, "rate": r, "ratio": ratio, "d_acc": d_acc.mean, "meets": meets})
                series["ECE"].setdefault(f"CigL {r:g}", []).append((s, interval(ece)))
                series["accuracy"].setdefault(f"CigL {r:g}", []).append((s, interval(acc)))
                rows.append([_pct(s), f"CigL, drop {r:g}", interval(acc).format(4), interval(ece).format(4),
                             d_acc.format(4), f"{ratio:.2f}", "yes" if meets else "no"])
        cfg = rep.spec.config(setup)
        rep.add(f"### {setup}: {cfg.data}, {cfg.model}, {cfg.epochs} epochs",
                table(["sparsity", "method", "accuracy", "ECE", "Δ accuracy vs RigL", "ECE ratio", "target met"], rows))
        path = rep.figure(f"drop-rate-{setup}.svg")
        plot_panels([("ECE", series["ECE"]), ("accuracy", series["accuracy"])], path, "sparsity",
                    f"{setup}: CigL drop rates vs RigL", xticks=d.sparsities)
        rep.add(rep.link(path, f"drop-rate sweep, {setup}"))
    _drop_rate_choice(rep, found, default_rate)


def _drop_rate_choice(rep: Report, found: list[dict], default_rate: float) -> None:
    """Per rate over every swept setting, and the rule that picks the default on the first (main) setup."""
    rates = rep.spec.drop_rate.rates
    rows = []
    for r in rates:
        at = [f for f in found if f["rate"] == r]
        rows.append([f"{r:g}", f"{sum(f['meets'] for f in at)} of {len(at)}",
                     f"{sum(f['ratio'] for f in at) / len(at):.2f}", f"{max(f['ratio'] for f in at):.2f}",
                     f"{100 * sum(f['d_acc'] for f in at) / len(at):+.2f}", f"{100 * min(f['d_acc'] for f in at):+.2f}"])
    main = rep.spec.drop_rate.setups[0]

    def on_main(r: float) -> list[dict]:
        return [f for f in found if f["rate"] == r and f["setup"] == main]

    keeping = [r for r in rates if sum(f["d_acc"] for f in on_main(r)) >= 0] or list(rates)
    chosen = min(keeping, key=lambda r: max(f["ratio"] for f in on_main(r)))
    met = [f for f in found if f["meets"]]
    rep.add("### Choosing the default",
            table(["drop rate", "target met", "mean ECE ratio", "worst ECE ratio", "mean Δ accuracy (points)",
                   "worst Δ accuracy (points)"], rows),
            (f"The target is met in {len(met)} of {len(found)} settings. " if met else
             f"No rate meets the target in any of the {len(found)} settings; the default is the best trade-off. ")
            + f"Rule: on the main job's setup ({main}), among the rates that do not lower the mean accuracy, the "
            f"smallest worst-case ECE ratio over the swept sparsities; it picks **{chosen:g}**"
            + (", the library's default." if chosen == default_rate else
               f", which differs from the library's default {default_rate:g}: the default is stale."))


# ------------------------------------------------------------------------------------------ variational CigL

#: vcigl's target: ECE within this factor of the best tuned CigL's, at accuracy ≥ RigL − ACCURACY_SLACK.
VCIGL_ECE_FACTOR = 1.1


def variational_section(rep: Report, default_prior: float) -> None:
    v, d = rep.spec.variational, rep.spec.drop_rate
    if v is None:
        return
    rep.add("## Variational CigL: learned keep probabilities",
            "vCigL (`--method vcigl`, beyond the paper) learns the keep probability of the random mask by SVI "
            "(Concrete dropout on the active weights, docs/theory.md) under a prior `Z ~ Bernoulli(p₀)`; the prior's "
            "`p₀` is swept. Its output is the averaged network; `vCigL + MC` is the Monte-Carlo predictive over the "
            "learned `q(Z)` of the same runs. The reference is the *best tuned* CigL: the drop rate of the sweep above with the lowest "
            f"mean ECE at that setting. Target: ECE(vCigL) ≤ {VCIGL_ECE_FACTOR} × ECE(best CigL) at accuracy ≥ "
            f"RigL − {ACCURACY_SLACK * 100:g} points. The library's default prior is **p₀ = {default_prior:g}** "
            "(bayessparse.config.TrainConfig.keep_prior).")
    found = []
    for setup in d.setups:
        rows = []
        for s in d.sparsities:
            rigl = {m: rep.row_values(setup, "rigl", s, test_metric(m)) for m in ("accuracy", "ece")}
            tuned = {r: {m: rep.row_values(setup, "cigl", s, test_metric(m), drop_rate=r) for m in ("accuracy", "ece")}
                     for r in d.rates}
            best = min(d.rates, key=lambda r: interval(tuned[r]["ece"]).mean)
            rows.append([_pct(s), "RigL", interval(rigl["accuracy"]).format(4), interval(rigl["ece"]).format(4),
                         "", "", "", ""])
            rows.append([_pct(s), f"CigL, best drop {best:g}", interval(tuned[best]["accuracy"]).format(4),
                         interval(tuned[best]["ece"]).format(4), "", "", "", ""])
            for prior in v.priors:
                acc = rep.row_values(setup, "vcigl", s, test_metric("accuracy"), keep_prior=prior)
                ece = rep.row_values(setup, "vcigl", s, test_metric("ece"), keep_prior=prior)
                keep = rep.row_values(setup, "vcigl", s, lambda card: card["keep_probability"], keep_prior=prior)
                d_acc = paired_difference(acc, rigl["accuracy"])
                ratio = interval(ece).mean / max(interval(tuned[best]["ece"]).mean, 1e-12)
                meets = ratio <= VCIGL_ECE_FACTOR and d_acc.mean >= -ACCURACY_SLACK
                found.append({"setup": setup, "sparsity": s, "prior": prior, "ratio": ratio, "d_acc": d_acc.mean,
                              "meets": meets})
                rows.append([_pct(s), f"vCigL, p₀ = {prior:g}", interval(acc).format(4), interval(ece).format(4),
                             interval(keep).format(4), d_acc.format(4), f"{ratio:.2f}", "yes" if meets else "no"])
                mc = {m: rep.row_values(setup, "vcigl+mc", s, test_metric(m), keep_prior=prior) for m in ("accuracy", "ece")}
                mc_ratio = interval(mc["ece"]).mean / max(interval(tuned[best]["ece"]).mean, 1e-12)
                rows.append([_pct(s), f"vCigL + MC ({rep.spec.mc_samples} draws of q), p₀ = {prior:g}",
                             interval(mc["accuracy"]).format(4), interval(mc["ece"]).format(4), "",
                             paired_difference(mc["accuracy"], rigl["accuracy"]).format(4), f"{mc_ratio:.2f}", ""])
        cfg = rep.spec.config(setup)
        rep.add(f"### {setup}: {cfg.data}, {cfg.model}, {cfg.epochs} epochs",
                table(["sparsity", "method", "accuracy", "ECE", "learned keep probability", "Δ accuracy vs RigL",
                       "ECE / best CigL", "target met"], rows))
    main = d.setups[0]
    at_main = {p: [f for f in found if f["prior"] == p and f["setup"] == main] for p in v.priors}
    keeping = [p for p in v.priors if sum(f["d_acc"] for f in at_main[p]) >= 0] or list(v.priors)
    chosen = min(keeping, key=lambda p: max(f["ratio"] for f in at_main[p]))
    met = [f for f in found if f["meets"]]
    rep.claim("vCigL within 1.1 × the best tuned CigL's ECE at RigL's accuracy",
              f"met in {len(met)} of {len(found)} settings")
    rep.add(f"The target is met in {len(met)} of {len(found)} settings. Rule for the default prior: on {main}, among "
            "the priors that do not lower the mean accuracy below RigL's, the smallest worst-case ECE ratio to the best "
            f"tuned CigL; it picks **p₀ = {chosen:g}**" + (", the library's default." if chosen == default_prior else
                                                          f", which differs from the library's default {default_prior:g}."))


# ------------------------------------------------------------------------------------------ DST-EE


def dst_ee_section(rep: Report) -> None:
    c = rep.spec.calibration
    if c is None or "dst-ee" not in c.rows or "rigl" not in c.rows:
        return
    rows, intervals = [], []
    for setup in c.setups:
        for s in c.sparsities:
            d = paired_difference(rep.row_values(setup, "dst-ee", s, test_metric("accuracy")),
                                  rep.row_values(setup, "rigl", s, test_metric("accuracy")))
            if s >= 0.9:
                intervals.append(d)
            rows.append([setup, _pct(s), d.format(4)])
    rep.add("## DST-EE vs RigL (Huang et al., DAC 2023)",
            "Claim: DST-EE's exploration bonus gives higher accuracy than RigL, more so at high sparsity. "
            "Paired accuracy difference DST-EE − RigL (same runs as the calibration tables).",
            table(["setup", "sparsity", "Δ accuracy"], rows),
            f"Verdict at sparsities ≥ 0.9: {rep.claim('DST-EE more accurate than RigL', verdict(intervals, lambda i: i.mean > 0))}.")


# ------------------------------------------------------------------------------------------ FreeTickets


def freetickets_section(rep: Report) -> None:
    f = rep.spec.freetickets
    if f is None:
        return
    rows_cells = freetickets_cells(rep.spec, rep.root)
    cfg = rep.spec.config(f.setup)

    def values(name: str, key: Callable[[dict], float]) -> list[float]:
        return [key(rep.scores[c.folder]["model"]) for c in rows_cells[name]]

    metrics = [
        ("accuracy", lambda k: k["test"]["accuracy"]), ("NLL", lambda k: k["test"]["nll"]),
        ("ECE", lambda k: k["test"]["ece"]), ("OOD AUROC", lambda k: k["ood"]["auroc_max_softmax"]),
        ("corrupted accuracy", lambda k: sum(r["accuracy"] for r in k["corruptions"]) / len(k["corruptions"])),
        ("training cost", lambda k: k.get("cost", {}).get("flops_proxy", 1.0)),
    ]
    rows = [[name, *[interval(values(name, key)).format(3 if label == "training cost" else 4) for label, key in metrics]]
            for name in rows_cells]
    names = list(rows_cells)
    dst, edst = names[2], names[3]
    claims = []
    for ens in (dst, edst):
        for ref in ("dense", names[1]):
            for label, key, better in (("accuracy", metrics[0][1], 1), ("NLL", metrics[1][1], -1)):
                d = paired_difference(values(ens, key), values(ref, key))
                claims.append((f"{ens} − {ref}, {label}", d, better))
    claim_rows = [[what, d.format(4), verdict([d], lambda i, b=b: b * i.mean > 0)] for what, d, b in claims]
    for ens in (dst, edst):  # "better" on both axes: the NLL difference enters with its sign flipped
        signed = [Interval(b * d.mean, d.half_width, d.n) for what, d, b in claims if what.startswith(f"{ens} − dense,")]
        rep.claim(f"{ens} beats a single dense network (accuracy and NLL)", verdict(signed, lambda i: i.mean > 0))
    rep.add("## FreeTickets: DST and EDST ensembles (Liu et al., ICLR 2022)",
            f"{cfg.data}, {cfg.model}, {cfg.epochs} epochs per run, sparsity {_pct(f.sparsity)}, {f.members} members. "
            "Training cost: epochs × density summed over the trained runs, relative to one dense run "
            "(the FLOPs proxy of bayessparse.workflows.ensembles; the EDST run trains exploration plus one phase per member). "
            "Corrupted accuracy: mean over the corruption suite and severities 1-5. "
            "OOD: the dataset's default OOD set, max-softmax score.",
            table(["", *[m for m, _ in metrics]], rows),
            "Claim: a sparse ensemble beats a single dense network at no more training cost than one dense run.",
            table(["paired difference", "mean ± 95 % CI", "verdict"], claim_rows))


# ------------------------------------------------------------------------------------------ IMP


def imp_section(rep: Report) -> None:
    if not rep.spec.imp:
        return
    from bayessparse.plots.study import plot_panels

    sweeps = imp_cells(rep.spec, rep.root)
    rep.add("## IMP, label noise and the sparse double descent (Arora et al., UAI 2023)",
            "Iterative magnitude pruning with rewinding to initialisation, 20 % label noise on the training labels, "
            "clean test labels. The best round is chosen on the *validation* error (the test split is not used to "
            "select). Claim: the best pruned network is closer to the true p(y|x) (smaller KL) and less "
            "over-confident than the dense one.")
    for study in rep.spec.imp:
        rows, kl_d, oc_d, err_d = [], [], [], []
        series: dict[str, dict[str, list]] = {"test error": {}, "ECE": {}, "KL": {}}
        for width in study.widths:
            runs = [rep.scores[c.folder]["rounds"] for c in sweeps[(study.name, width)]]
            dense = [r[0] for r in runs]
            best = [min(r, key=lambda x: (x["val_error"], x["round"])) for r in runs]

            def col(records, key):
                return [x[key] for x in records]

            def over(records):
                return [x["mean_confidence"] - x["accuracy"] for x in records]

            has_kl = "kl_clean" in dense[0]
            err_d.append(paired_difference(col(best, "test_error"), col(dense, "test_error")))
            oc_d.append(paired_difference(over(best), over(dense)))
            if has_kl:
                kl_d.append(paired_difference(col(best, "kl_clean"), col(dense, "kl_clean")))
            rows.append([f"{width:g}", f"{dense[0]['nonzero']:,}", interval(col(best, "density")).format(4),
                         interval(col(dense, "test_error")).format(3), interval(col(best, "test_error")).format(3),
                         interval(over(dense)).format(3), interval(over(best)).format(3),
                         interval(col(dense, "kl_clean")).format(3) if has_kl else "–",
                         interval(col(best, "kl_clean")).format(3) if has_kl else "–"])
            n_rounds = min(len(r) for r in runs)
            for key, label in (("test_error", "test error"), ("ece", "ECE"), ("kl_clean", "KL")):
                if key == "kl_clean" and not has_kl:
                    continue
                series[label][f"width {width:g}"] = [
                    (sum(r[i]["nonzero"] for r in runs) / len(runs), interval([r[i][key] for r in runs]))
                    for i in range(n_rounds)]
        rep.add(f"### {study.name}",
                f"`{_imp_command(rep.spec, study)}`",
                table(["width", "weights (dense)", "best density", "test error dense", "test error best",
                       "conf − acc dense", "conf − acc best", "KL dense", "KL best"], rows),
                f"Test error, best − dense: {verdict(err_d, lambda i: i.mean < 0)}. "
                f"Over-confidence, best − dense: "
                f"{rep.claim(f'IMP: best pruned less over-confident than dense, {study.name}', verdict(oc_d, lambda i: i.mean < 0))}."
                + (f" KL to the true p(y|x), best − dense: "
                   f"{rep.claim(f'IMP: best pruned closer to the true p(y|x), {study.name}', verdict(kl_d, lambda i: i.mean < 0))}."
                   if kl_d else ""))
        panels = [(label, s) for label, s in series.items() if s]
        path = rep.figure(f"imp-{study.name}.svg")
        plot_panels(panels, path, "non-zero weights", f"IMP on {study.name}: mean over seeds per round", logx=True)
        rep.add(rep.link(path, f"sparse double descent, {study.name}"))


def _imp_command(spec: StudySpec, study) -> str:
    fields = {**spec.base, **study.config}
    sets = " ".join(f"--set {k}={v}" for k, v in fields.items())
    return f"bayessparse imp {sets} --set width=W --seed K --rounds {study.rounds} --prune-fraction {study.prune_fraction:g} --out SWEEP"


# ------------------------------------------------------------------------------------------ deep GPs

#: the targets of the deep GP comparison: the best sparse Bayesian row's NLL ≤ the better deep GP's at ≤ this
#: fraction of its training time (classification), and the sparse nets' 90 % interval coverage in this range
GP_TIME_RATIO = 1 / 3
COVERAGE_90 = (0.85, 0.95)
GP_LABELS = {"dgp": "DGP (raw inputs)", "dspp": "DSPP (raw inputs)", "svdkl": "SV-DKL"}
#: each task's columns (:attr:`bayessparse.tasks.Task.report_columns`: key, label, decimals, +1 if higher is
#: better / −1 if lower is); coverage is scored by its distance to 0.9
GP_CLASSIFICATION = CLASSIFICATION.report_columns
GP_REGRESSION = REGRESSION.report_columns
GP_COSTS = (("train_seconds", "train s"), ("inference_ms_per_example", "inference ms / example"),
            ("parameters", "parameters (non-zero)"))


class _Line:
    """One row of a deep GP section table: per-seed values of every metric (``None``: not recorded)."""

    def __init__(self, label: str, deep_gp: bool, bayesian: bool, sparse: bool,
                 values: dict[str, list[float] | None]) -> None:
        self.label, self.deep_gp, self.bayesian, self.sparse, self.values = label, deep_gp, bayesian, sparse, values

    def has(self, key: str) -> bool:
        return self.values.get(key) is not None

    def interval(self, key: str) -> Interval:
        return interval(self.values[key])

    def mean(self, key: str) -> float:
        return self.interval(key).mean


def _per_seed(records: Sequence[dict[str, Any]], key: str) -> list[float] | None:
    values = [r.get(key) for r in records]
    return None if any(v is None for v in values) else [float(v) for v in values]


def _is_bayesian(row: str) -> bool:
    """CigL's family with its random mask: CigL and vCigL rows (not the ablation without Z)."""
    r = ROWS[row]
    return r.method in ("cigl", "vcigl") and r.changes.get("drop_rate", 1.0) != 0.0


def _mc_label(row: str) -> str:
    """The label of the Monte Carlo predictive of ``row``'s runs: its ROWS entry if it has one."""
    method = ROWS[row].method
    named = [r.label for r in ROWS.values() if r.method == method and r.predict == "mc"]
    return named[0] if named else f"{ROWS[row].label} + MC"


def _gp_lines(rep: Report, task: Task, rows: dict[str, list]) -> list[_Line]:
    """The table rows of one group of :func:`~bayessparse.workflows.study.plan.deep_gp_cells`, networks first."""
    keys = [k for k, *_ in task.report_columns] + [k for k, _ in GP_COSTS]
    lines = []
    for name, cells in rows.items():
        scores = [rep.scores[c.folder] for c in cells]
        metrics = [s["metrics"] for s in scores]
        if name in GP_LABELS:
            lines.append(_Line(GP_LABELS[name], True, False, False, {k: _per_seed(metrics, k) for k in keys}))
            continue
        row = ROWS[name]
        sparse, bayes = row.method != "dense", _is_bayesian(name)
        if task.predicts_classes:
            cards = [s[row.predict]["test"] for s in scores]
            values = {k: _per_seed(cards if k in cards[0] else metrics, k) for k in keys}
            if row.predict == "mc":  # the Monte Carlo predictive's own time, S forward passes
                values["inference_ms_per_example"] = _per_seed(metrics, "mc_inference_ms_per_example")
            lines.append(_Line(row.label, False, bayes, sparse, values))
            continue
        lines.append(_Line(row.label, False, bayes, sparse, {k: _per_seed(metrics, k) for k in keys}))
        if all("mc_nll" in m for m in metrics):  # Monte Carlo over Z of the same runs (random-mask methods)
            mc = {k: _per_seed(metrics, f"mc_{k}") for k in keys}
            mc.update({k: _per_seed(metrics, k) for k in ("train_seconds", "parameters")})
            lines.append(_Line(_mc_label(name), False, bayes, sparse, mc))
    return lines


def _count(i: Interval) -> str:
    if not math.isfinite(i.half_width) or i.half_width == 0:
        return f"{i.mean:,.0f}"
    return f"{i.mean:,.0f} ± {i.half_width:,.0f}"


def _cost_cell(line: _Line, key: str) -> str:
    if not line.has(key):
        return "–"
    i = line.interval(key)
    if key == "parameters":
        return _count(i)
    return i.format(1 if abs(i.mean) >= 10 else 2) if key == "train_seconds" else i.format(4)


def _gp_table(lines: list[_Line], columns: Sequence[tuple[str, str, int, int]]) -> str:
    rows = [[line.label, *[line.interval(k).format(d) if line.has(k) else "–" for k, _, d, _ in columns],
             *[_cost_cell(line, k) for k, _ in GP_COSTS]] for line in lines]
    return table(["method", *[label for _, label, _, _ in columns], *[label for _, label in GP_COSTS]], rows)


def _best(lines: list[_Line]) -> _Line | None:
    """The line with the lowest mean NLL."""
    return min(lines, key=lambda line: line.mean("nll"), default=None)


def _ratio(a: _Line, b: _Line, key: str) -> float | None:
    if not (a.has(key) and b.has(key)) or b.mean(key) <= 0:
        return None
    return a.mean(key) / b.mean(key)


def _times(r: float) -> str:
    return f"{r:.2g}×"


def _gp_reading(name: str, lines: list[_Line], columns: Sequence[tuple[str, str, int, int]],
                tally: dict[str, int], ratios: dict[str, list[float]]) -> str | None:
    """One paragraph from the numbers: the best network line against the better deep GP, metric by metric
    (paired by seed; ahead means an interval that excludes 0), then what it costs. Counts the comparisons
    into ``tally`` and the cost ratios into ``ratios``."""
    nets = [line for line in lines if not line.deep_gp and line.has("nll")]
    net = _best([line for line in nets if line.bayesian]) or _best(nets)
    gp = _best([line for line in lines if line.deep_gp and line.has("nll")])
    if net is None or gp is None:
        return None
    ahead, behind, even = [], [], []
    for key, label, digits, sign in columns:
        if not (net.has(key) and gp.has(key)) or (sign == 0 and key != "coverage_90"):
            continue
        if sign == 0:  # the 90 % coverage: closer to its nominal level is better
            a, b = ([abs(v - 0.9) for v in line.values[key]] for line in (net, gp))
            d, sign, label = paired_difference(a, b), -1, "|coverage 90 % − 0.9|"
        else:
            d = paired_difference(net.values[key], gp.values[key])
        text = f"{label} ({d.mean:+.{digits}f})"
        if d.excludes_zero():
            (ahead if sign * d.mean > 0 else behind).append(text)
        else:
            even.append(text)
    tally["networks"] += len(ahead)
    tally["deep GPs"] += len(behind)
    tally["unresolved"] += len(even)
    which = "the best sparse Bayesian row" if net.bayesian else "the best network row"
    text = (f"**{name}**: {net.label} against {gp.label}, {which} and the better deep GP by mean NLL (paired "
            "differences network − deep GP). Resolved in the network's favour: " + (", ".join(ahead) or "none")
            + "; in the deep GP's favour: " + (", ".join(behind) or "none")
            + (f"; not resolved with {net.interval('nll').n} seeds: " + ", ".join(even) if even else "") + ".")
    costs = []
    for key, what in (("train_seconds", "training time"), ("inference_ms_per_example", "prediction time per example"),
                      ("parameters", "parameter count")):
        r = _ratio(net, gp, key)
        if r is not None:
            costs.append(f"{_times(r)} its {what}")
            ratios.setdefault(key, []).append(r)
    if costs:
        text += f" Against the deep GP the network has {', '.join(costs)}."
    return text


def _span(values: list[float]) -> str:
    return _times(values[0]) if len(values) == 1 else f"{_times(min(values))} to {_times(max(values))}"


def deep_gp_section(rep: Report) -> None:
    g = rep.spec.deep_gp
    if g is None:
        return
    groups = deep_gp_cells(rep.spec, rep.root)
    example = next(cells[0].gp for rows in groups.values() for name, cells in rows.items() if name in GP_LABELS)
    rep.add("## Sparse Bayesian networks and deep GPs",
            "CigL is read as a variational approximation of a deep Gaussian process; here the sparse networks at "
            f"sparsity {_pct(g.sparsity)} stand next to real GPs (GPyTorch, bayessparse.baselines: "
            f"{', '.join(GP_LABELS[m] for m in g.methods)}; the two-layer DGP and DSPP see the raw inputs, "
            "SV-DKL is one layer of GPs on the features of the rows' own network, trained with it; "
            f"{example.hidden_dims} GPs per layer, {example.num_inducing} "
            f"inducing points each, {example.epochs} epochs of Adam at lr {example.lr:g}) on the same data, splits "
            f"and seeds ({', '.join(map(str, rep.spec.seeds))}). Network rows score the row's prediction on the test "
            "split (for a calibration setup, the numbers of its tables); deep GP rows their run's test metrics, "
            "computed by the same functions with the same ECE bins. Costs: train s is the training loop's wall-clock time "
            "(validation excluded) in the study's worker process, so with several workers trainings shared the "
            "CPU: read the ratios within a table, not the seconds across machines; inference is the test-set "
            "prediction time per example (a Monte Carlo row draws its samples, a deep GP its "
            f"{example.eval_samples} predictive draws); parameters are the network's non-zero weights and biases "
            "and every parameter of the GP that its model uses, variational ones included (of each Cholesky factor "
            "its lower triangle). Mean ± 95 % CI over seeds; "
            "differences are paired by seed.")
    targets, coverage_rows, readings, series = [], [], [], []
    tally = {"networks": 0, "deep GPs": 0, "unresolved": 0}
    ratios: dict[str, list[float]] = {}
    for (task, name), rows in groups.items():
        lines = _gp_lines(rep, task, rows)
        columns = task.report_columns
        setup_fields = deep_gp_groups(rep.spec)[(task, name)][0]
        cfg = resolve(rep.spec.base, setup_fields)
        heading, title = task.report_heading(
            name, cfg.data, f"{cfg.model}{_width(cfg)}, {cfg.epochs} epochs, sparsity {_pct(g.sparsity)}")
        about = task.report_note
        rep.add(heading, *([about] if about else []), _gp_commands(rep, setup_fields, rows),
                f"**{title}**", _gp_table(lines, columns))
        reading = _gp_reading(name, lines, columns, tally, ratios)
        if reading:
            readings.append(reading)
        series.append((f"NLL, {name}", {line.label: [(line.mean("train_seconds"), line.interval("nll"))]
                                        for line in lines if line.has("train_seconds") and line.has("nll")}))
        if not task.has_intervals:
            targets.append(_nll_target(name, lines))
        else:
            coverage_rows += [line for line in lines if not line.deep_gp and line.sparse and line.has("coverage_90")]
    _gp_targets(rep, [t for t in targets if t is not None], coverage_rows, groups)
    if len(readings) > 1:
        totals = (f"Over the {len(readings)} setups the networks are ahead with a resolved difference in "
                  f"{tally['networks']} metric comparisons, the deep GPs in {tally['deep GPs']}, and "
                  f"{tally['unresolved']} are not resolved with these seeds.")
        spans = [f"{what} {_span(ratios[key])}" for key, what in (
            ("train_seconds", "training time"), ("inference_ms_per_example", "prediction time"),
            ("parameters", "parameter count")) if ratios.get(key)]
        if spans:
            totals += " The network's costs as multiples of the deep GP's: " + ", ".join(spans) + "."
        readings.append(totals)
    if readings:
        rep.add("### Reading", *readings)
    if any(s for _, s in series):
        from bayessparse.plots.study import plot_panels

        path = rep.figure("deep-gp.svg")
        plot_panels([p for p in series if p[1]], path, "training seconds (mean over seeds)",
                    "test NLL vs training time (mean, 95 % CI)", logx=True)
        rep.add(rep.link(path, "NLL vs training time, sparse networks and deep GPs"))


def _nll_target(name: str, lines: list[_Line]) -> dict[str, Any] | None:
    """The classification target on one setup: the best sparse Bayesian row against the better deep GP."""
    net = _best([line for line in lines if line.bayesian and line.sparse and line.has("nll")])
    gp = _best([line for line in lines if line.deep_gp and line.has("nll")])
    if net is None or gp is None:
        return None
    ratio = _ratio(net, gp, "train_seconds")
    d = paired_difference(net.values["nll"], gp.values["nll"])
    meets = net.mean("nll") <= gp.mean("nll") and ratio is not None and ratio <= GP_TIME_RATIO
    return {"setup": name, "net": net, "gp": gp, "d_nll": d, "ratio": ratio, "meets": meets}


def _gp_targets(rep: Report, targets: list[dict[str, Any]], coverage: list[_Line], groups: dict) -> None:
    blocks = []
    if targets:
        rows = [[t["setup"], t["net"].label, t["net"].interval("nll").format(4), t["gp"].label,
                 t["gp"].interval("nll").format(4), t["d_nll"].format(4),
                 "–" if t["ratio"] is None else f"{t['ratio']:.2f}", "met" if t["meets"] else "not met"]
                for t in targets]
        met = sum(t["meets"] for t in targets)
        blocks += ["**Target: the best sparse Bayesian row's NLL ≤ the better deep GP's at ≤ 1/3 of its training "
                   "time**", table(["setup", "best sparse Bayesian row", "NLL", "better deep GP", "NLL",
                                    "paired Δ NLL", "train time ratio", "target"], rows)]
        details = []
        for t in targets:
            why = []
            if t["net"].mean("nll") > t["gp"].mean("nll"):
                why.append("its NLL is higher")
            if t["ratio"] is None:
                why.append("a training time is not recorded")
            elif t["ratio"] > GP_TIME_RATIO:
                why.append(f"it trains in {t['ratio']:.2f} of the deep GP's time, more than {GP_TIME_RATIO:.2f}")
            resolved = ("a resolved difference" if t["d_nll"].excludes_zero() else "a difference these seeds do not "
                        "resolve")
            details.append(f"{t['setup']}: {'**met**' if t['meets'] else '**not met**'} ({t['net'].label} NLL "
                           f"{t['net'].interval('nll').format(4)} against {t['gp'].label} "
                           f"{t['gp'].interval('nll').format(4)}, {resolved}"
                           + (f"; time ratio {t['ratio']:.2f}" if t["ratio"] is not None else "")
                           + (f"; not met because {' and '.join(why)}" if why else "") + ").")
        blocks.append(" ".join(details))
        rep.claim("Sparse Bayesian nets: NLL ≤ the better deep GP's at ≤ 1/3 of its training time",
                  f"met on {met} of {len(targets)} setups")
    if coverage:
        low, high = COVERAGE_90
        rows = []
        for line in coverage:
            i = line.interval("coverage_90")
            inside = low <= i.mean <= high
            tight = math.isfinite(i.half_width) and low <= i.low and i.high <= high
            rows.append([line.label, i.format(3), "met" if inside else "not met", "yes" if tight else "no"])
        met = sum(r[2] == "met" for r in rows)
        name = next(n for t, n in groups if t.has_intervals)
        narrow = sum(line.mean("coverage_90") < low for line in coverage)
        wide = sum(line.mean("coverage_90") > high for line in coverage)
        side = []
        if narrow:
            side.append(f"{narrow} cover less than {low:g} of the test targets: their intervals are too narrow "
                        "(over-confident)")
        if wide:
            side.append(f"{wide} cover more than {high:g}: their intervals are too wide (under-confident)")
        blocks += [f"**Target: the sparse nets' 90 % interval coverage on {name} within {low:g}-{high:g}**",
                   table(["row", "coverage 90 %", f"mean in [{low:g}, {high:g}]", "whole interval inside"], rows),
                   f"Met by {met} of {len(rows)} sparse rows" + (f"; {'; '.join(side)}." if side else ".")]
        rep.claim(f"Sparse nets' 90 % coverage within {low:g}-{high:g} on {name}", f"met by {met} of {len(rows)} rows")
    if blocks:
        rep.add("### Targets", *blocks)


def _gp_commands(rep: Report, setup_fields: dict[str, Any], rows: dict[str, list]) -> str:
    from bayessparse.baselines.gp_config import DEFAULTS

    fields = {**rep.spec.base, **setup_fields}
    sets = " ".join(f"--set {k}={v}" for k, v in fields.items() if v is not None)  # None: the field's default
    out = (f"One network cell: `bayessparse train {sets} --method METHOD --sparsity {_pct(rep.spec.deep_gp.sparsity)} "
           "--seed K --out RUN`")
    gp_rows = [cells[0] for name, cells in rows.items() if name in GP_LABELS]
    if gp_rows:
        cfg = gp_rows[0].gp.to_dict()
        shown = {k: v for k, v in cfg.items() if k not in ("method", "seed") and (k == "data" or v != DEFAULTS[k])}
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        out += (f"; one deep GP cell: `python -c \"from bayessparse.baselines import DeepGPConfig, train_deep_gp; "
                f"train_deep_gp(DeepGPConfig(method='METHOD', seed=K, {args}), 'RUN')\"`")
    return out + "."
