"""The study's report: Markdown tables with 95 % confidence intervals, verdicts, and the figures.

Every number comes from the cells' scores (``study.json`` of each folder, see
:mod:`bayessparse.study.cells`); nothing is typed in. Intervals are over seeds
(:mod:`bayessparse.stats`); differences between methods are paired by seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bayessparse.config import TrainConfig
from bayessparse.stats import Interval, interval, paired_difference
from bayessparse.study.plan import freetickets_cells, imp_cells, row_cell
from bayessparse.study.rows import ROWS
from bayessparse.study.spec import StudySpec

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
            "(the FLOPs proxy of bayessparse.ensembles; the EDST run trains exploration plus one phase per member). "
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
