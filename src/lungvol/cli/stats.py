"""``lungvol stats 2x2|hl`` and ``lungvol paper``: the statistics engine for statisticians."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lungvol.cli._common import fail, handle_errors

if TYPE_CHECKING:
    from lungvol.stats.results import TwoByTwoResult


def _num(value: float | None, decimals: int) -> str:
    from lungvol.stats.paper import format_limit

    return format_limit(value, decimals=decimals)


def _print_2x2(r: TwoByTwoResult, decimals_or: int = 3, decimals_p: int = 4) -> None:
    from lungvol.stats.paper import format_p

    def pct(events: int, n: int) -> str:
        return f"{100 * events / n:.1f}%" if n else "-"

    def ci(est: float | None, low: float | None, high: float | None) -> str:
        if est is None:
            return "NA"
        return (f"{_num(est, decimals_or)} ({_num(low, decimals_or)}, "
                f"{_num(high, decimals_or)})")

    e = r.exact
    conf = f"{100 * r.odds_ratio.confidence:g}%"
    rows = [
        ("odds ratio (trial rule)", ci(r.odds_ratio.estimate, r.odds_ratio.ci_low,
                                       r.odds_ratio.ci_high), r.odds_ratio.method),
        ("p (trial rule)", format_p(r.p, decimals=decimals_p), r.p_method),
        ("Wald odds ratio", ci(r.wald.estimate, r.wald.ci_low, r.wald.ci_high),
         r.wald.note or f"{conf} Wald CI"),
        ("exact MUE", ci(e.mue, e.ci_low, e.ci_high),
         f"{'one' if e.sided == 1 else 'two'}-sided {conf} exact CI" + (
             f" ({e.tail} tail)" if e.sided == 1 and e.tail else "")),
        ("exact CMLE", _num(e.cmle, decimals_or) if e.cmle is not None else "NA",
         "conditional MLE" if e.cmle is not None else "does not exist (t at edge of support)"),
        ("exact p", format_p(e.p, decimals=decimals_p),
         f"one-sided {format_p(e.p_one_sided, decimals=decimals_p)}, two-sided "
         f"{format_p(e.p_two_sided, decimals=decimals_p)}"),
        ("Pearson chi-square p", format_p(r.chi2_p, decimals=decimals_p),
         "no continuity correction; smallest expected count "
         + (_num(r.min_expected, 2) if r.min_expected is not None else "NA")),
        ("Fisher exact p", format_p(r.fisher_p, decimals=decimals_p), "two-sided"),
    ]
    typer.echo(f"arm 1: {r.events1}/{r.n1} ({pct(r.events1, r.n1)})   "
               f"arm 2: {r.events2}/{r.n2} ({pct(r.events2, r.n2)})")
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    for name, value, how in rows:
        typer.echo(f"{name:<{w0}}  {value:<{w1}}  {how}")
    if r.note and not r.is_estimable:
        typer.echo(f"note: {r.note}")


def _echo_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, allow_nan=False))


def register(app: typer.Typer) -> None:
    """Add ``stats`` (sub-app with ``2x2`` and ``hl``) and ``paper`` to the main app."""
    stats_app = typer.Typer(
        name="stats",
        help="Two-arm statistics as the trial computed them (2x2 tables, Hodges-Lehmann).",
        no_args_is_help=True,
    )

    @stats_app.command("2x2")
    @handle_errors
    def two_by_two(
        arm1: Annotated[str, typer.Argument(help="Arm 1 events/n, e.g. 10/56.")],
        arm2: Annotated[str, typer.Argument(help="Arm 2 events/n, e.g. 0/30.")],
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
        alpha: Annotated[float, typer.Option("--alpha", help="1 - confidence level.")] = 0.05,
        two_sided: Annotated[
            bool,
            typer.Option("--two-sided", help="Two-sided exact CI/p instead of SAS ONESIDED."),
        ] = False,
    ) -> None:
        """Odds ratio (Wald and exact conditional), chi-square, Fisher and the trial's p rule."""
        from lungvol.stats.tables import analyze_2x2, parse_events

        a, n1 = parse_events(arm1)
        c, n2 = parse_events(arm2)
        result = analyze_2x2(a, n1, c, n2, alpha=alpha, exact_sided=2 if two_sided else 1)
        if as_json:
            _echo_json(result.to_json_dict())
        else:
            _print_2x2(result)

    @stats_app.command("hl")
    @handle_errors
    def hl(
        file1: Annotated[Path, typer.Argument(help="Arm 1 values: one per line, or a CSV.")],
        file2: Annotated[Path, typer.Argument(help="Arm 2 values: one per line, or a CSV.")],
        column: Annotated[
            str | None, typer.Option("--column", help="Column name when the files are CSV.")
        ] = None,
        ci: Annotated[
            str, typer.Option("--ci", help="CI convention: sas (default), exact or r.")
        ] = "sas",
        alpha: Annotated[float, typer.Option("--alpha", help="1 - confidence level.")] = 0.05,
        quantiles: Annotated[
            str, typer.Option("--quantiles", help="Quantile definition: sas5 (default) or r7.")
        ] = "sas5",
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Hodges-Lehmann shift (arm 1 minus arm 2) with Moses CI, Wilcoxon p, arm summaries."""
        from lungvol.stats.inputs import read_values
        from lungvol.stats.nonparametric import hodges_lehmann, summarize, wilcoxon_rank_sum

        x = read_values(file1, column=column)
        y = read_values(file2, column=column)
        res = hodges_lehmann(x, y, ci=ci, alpha=alpha)  # type: ignore[arg-type]
        test = wilcoxon_rank_sum(x, y)
        s1 = summarize(x, quantile_definition=quantiles)  # type: ignore[arg-type]
        s2 = summarize(y, quantile_definition=quantiles)  # type: ignore[arg-type]
        if as_json:
            _echo_json({
                "estimate": res.estimate, "ci_low": res.ci_low, "ci_high": res.ci_high,
                "ci_method": res.ci_method, "p": test.p_value, "p_method": test.method,
                "hodges_lehmann": res.to_json_dict(), "wilcoxon": test.to_json_dict(),
                "arm1": s1.to_json_dict(), "arm2": s2.to_json_dict(),
            })
            return
        for label, s in (("arm 1", s1), ("arm 2", s2)):
            if s.n == 0:
                typer.echo(f"{label}: n=0 (missing {s.n_missing})")
                continue
            se = f"{s.se:.4g}" if s.se is not None else "NA"
            typer.echo(
                f"{label}: n={s.n} (missing {s.n_missing})  median {s.median:.4g} "
                f"(Q1 {s.q1:.4g}, Q3 {s.q3:.4g}) [{s.quantile_definition}]  "
                f"mean {s.mean:.4g} (SE {se})"
            )
        conf = f"{100 * res.confidence:g}%"
        if res.estimate is None:
            typer.echo(f"Hodges-Lehmann: NA ({res.note})")
        else:
            limits = (f"({res.ci_low:.4g}, {res.ci_high:.4g})" if res.ci_low is not None
                      else "(CI NA)")
            typer.echo(f"Hodges-Lehmann arm 1 - arm 2: {res.estimate:.4g} {conf} CI {limits}")
            typer.echo(f"  CI: {res.ci_method}" + (
                f"; order statistics {res.ci_rank_low} and {res.ci_rank_high} of "
                f"{res.n_differences}" if res.ci_rank_low is not None else ""))
        if res.note and res.estimate is not None:
            typer.echo(f"  note: {res.note}")
        p = f"{test.p_value:.4f}" if test.p_value is not None else "NA"
        typer.echo(f"Wilcoxon rank-sum p = {p} ({test.method})")
        if test.note:
            typer.echo(f"  note: {test.note}")

    app.add_typer(stats_app, name="stats")

    @app.command("paper")
    @handle_errors
    def paper(
        name: Annotated[str, typer.Argument(help="Paper whose published rows to check: shi2022.")],
        as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    ) -> None:
        """Recompute every count-based published row and compare at the printed precision."""
        from lungvol.stats.paper import compare_paper

        rows = compare_paper(name)
        n_bad = sum(not r.is_match for r in rows)
        if as_json:
            _echo_json({
                "paper": name,
                "n_rows": len(rows),
                "n_mismatches": n_bad,
                "rows": [
                    {**r.row.to_dict(), "computed_odds_ratio": r.computed_odds_ratio,
                     "computed_p": r.computed_p, "or_method": r.or_method,
                     "p_method": r.p_method, "match": r.is_match}
                    for r in rows
                ],
            })
        else:
            header = ("outcome", "visit", "MSC", "placebo", "published OR (95% CI)",
                      "computed OR (95% CI)", "pub. p", "comp. p", "match", "p method")
            table = [
                (r.row.outcome, r.row.visit, f"{r.row.events1}/{r.row.n1}",
                 f"{r.row.events2}/{r.row.n2}", r.row.odds_ratio, r.computed_odds_ratio,
                 r.row.p, r.computed_p,
                 ("yes*" if r.row.typo_note else "yes") if r.is_match else "NO",
                 r.p_method)
                for r in rows
            ]
            widths = [max(len(str(x[i])) for x in (header, *table)) for i in range(len(header))]
            for line in (header, *table):
                typer.echo("  ".join(f"{v:<{w}}" for v, w in zip(line, widths, strict=True))
                           .rstrip())
            for r in rows:
                if r.row.typo_note:
                    typer.echo(f"* {r.row.outcome} {r.row.visit}: {r.row.typo_note}")
            typer.echo(f"{len(rows) - n_bad}/{len(rows)} rows match at the printed precision")
        if n_bad:
            fail(f"{n_bad} of {len(rows)} published rows of {name} do not match; see the table")
