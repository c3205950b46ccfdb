"""Choose the finetuned benchmark's training length on the validation split, by a rule fixed in advance.

    python bench/finetune_length.py                          # S in 75,150,300; random picks at 1 %; 2 seeds
    python bench/finetune_length.py --candidates 50,100,200 --seeds 3

``bench/quality.py --mode finetune`` needs ``--min-steps S``: every selection is finetuned
(``cpu-quick``) for at least S optimiser steps, so 300 picks train as long as 1 200.  S is not
tuned per method and never on the test split: this script runs, for each candidate S,

    bench/quality.py --validation --mode finetune --methods random --budgets 1% --pool full --min-steps S

(random picks from 5/6 of the training split, scored on the held-out sixth), prints a table of
validation accuracy and time per S, and applies the rule stated here before any run:

    the smallest S whose mean validation accuracy is within --tolerance points (default 1.0)
    of the best candidate's

— longer training is allowed to win, but only by more than the noise of a finetune, since every
step is paid 45 times in the papers' regime on two CPU cores.  The choice is written to
``<out>/finetune-length.json``.  Resumable (the runs are ``bench/quality.py``'s CSVs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bilaf_core import benchmark as bm  # noqa: E402
from bilaf_core.errors import BilafError  # noqa: E402


def _candidates(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BilafError(f"--candidates must be comma-separated whole numbers of steps, got {text!r}") from None
    if not values or values[0] < 1:
        raise BilafError(f"--candidates must be positive step counts, got {text!r}")
    return values


def choose(means: dict[int, float], tolerance: float) -> int:
    """The smallest S whose mean accuracy (in points) is within `tolerance` of the best."""
    best = max(means.values())
    return min(s for s, m in means.items() if m >= best - tolerance)


def main(argv=None) -> int:
    import quality  # bench/quality.py

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", default="75,150,300", help="step counts to compare (default 75,150,300)")
    ap.add_argument("--seeds", default="2", help="as bench/quality.py --seeds (default 2: seeds 0,1)")
    ap.add_argument("--budget", default="1%", help="the validation budget (default 1%%, the middle of the papers' regime)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="points of validation accuracy a longer run must gain (default 1.0)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args(argv)
    candidates = _candidates(args.candidates)
    if args.tolerance < 0:
        raise BilafError(f"--tolerance must be >= 0 points, got {args.tolerance}")
    summary = {}
    for steps in candidates:
        quality.main(["--validation", "--mode", "finetune", "--methods", "random", "--budgets", args.budget,
                      "--pool", "full", "--seeds", args.seeds, "--min-steps", str(steps), "--out", args.out])
        rows = [r for r in bm.read_results(Path(args.out) / f"quality-finetune{steps}-validation.csv")
                if r.status == "ok" and r.seed in bm.parse_seeds(args.seeds)]
        if not rows:
            raise BilafError(f"no finished validation rows for S = {steps}; see the log above")
        accuracies = [100 * r.accuracy for r in rows]
        summary[steps] = {"mean": statistics.fmean(accuracies), "per_seed": {r.seed: round(100 * r.accuracy, 2) for r in rows},
                          "eval_s": statistics.fmean(r.eval_s for r in rows)}
    chosen = choose({s: v["mean"] for s, v in summary.items()}, args.tolerance)
    print(f"\n#### Training length on the validation split (random picks, {args.budget}, held-out sixth of the training pool)\n")
    print("| min steps S | validation accuracy, % (mean) | per seed | finetune + test, s (mean) |")
    print("|---:|---:|---|---:|")
    for s, v in summary.items():
        seeds = ", ".join(f"{a:.1f}" for _, a in sorted(v["per_seed"].items()))
        print(f"| {s}{' (chosen)' if s == chosen else ''} | {v['mean']:.1f} | {seeds} | {v['eval_s']:.0f} |")
    print(f"\nrule: the smallest S within {args.tolerance:g} points of the best mean → S = {chosen} "
          f"(load average {os.getloadavg()[0]:.1f} now)")
    record = {"chosen": chosen, "rule": f"smallest S within {args.tolerance:g} points of the best mean validation accuracy",
              "budget": args.budget, "seeds": args.seeds, "candidates": {str(s): v for s, v in summary.items()}}
    (Path(args.out) / "finetune-length.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
