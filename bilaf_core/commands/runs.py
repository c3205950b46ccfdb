"""``runs``: list what the workspace holds — feature sets, selections, evaluations."""

from __future__ import annotations

import json

ORDER = 60


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the workspace's feature sets, selections and evaluations",
        description="List what the workspace holds, newest first, with what produced each record.",
    )
    parser.add_argument("--feature-set", metavar="ID", help="only this feature set's selections and evaluations")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--delete", metavar="SELECTION_ID", help="delete one selection and its evaluations, then list")
    parser.set_defaults(func=run)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*(str(x) for x in row)) for row in rows]
    return "\n".join(lines)


def _seconds(value) -> str:
    return "" if value is None else f"{value:.2f}s"


def run(args) -> int:
    from ..workspace import Workspace

    ws = Workspace()
    if args.delete:
        ws.delete_selection(args.delete)
        print(f"deleted selection {args.delete}")
    sets = ws.list_feature_sets(include_missing=True)
    if args.feature_set:
        ws.get_feature_set(args.feature_set)  # a clear error when unknown
        sets = [s for s in sets if s["id"] == args.feature_set]
    selections = ws.list_selections(args.feature_set)
    evaluations = ws.list_evaluations(feature_set_id=args.feature_set)
    if args.json:
        print(json.dumps({"workspace": str(ws.root), "feature_sets": sets, "selections": selections,
                          "evaluations": evaluations}, indent=1, default=str))
        return 0

    print(f"workspace {ws.root}")
    if not sets:
        print("\nno feature set yet: `python -m bilaf_core extract` (or the app's Data & model page) makes one")
        return 0
    print(f"\nfeature sets ({len(sets)})")
    print(_table([[s["id"], s.get("dataset") or "imported", s.get("backbone") or "", f"{s['n']:,}", s["dim"],
                   "yes" if s["has_labels"] else "no", _seconds((s.get("timings") or {}).get("total")),
                   (s.get("created") or "")[:19], s["path"] + ("  (missing)" if s["missing"] else "")] for s in sets],
                 ["id", "dataset", "backbone", "n", "dim", "labels", "took", "created", "path"]))
    print(f"\nselections ({len(selections)})")
    if selections:
        print(_table([[r["id"], r["feature_set_id"], r["method"], r.get("name") or "", r["budget"],
                       "" if r["seed"] is None else r["seed"], _seconds(r["seconds"]), r.get("parent_id") or "",
                       r["created"][:19], r["code_version"]] for r in selections],
                     ["id", "feature set", "method", "name", "budget", "seed", "took", "edited from", "created", "code"]))
    print(f"\nevaluations ({len(evaluations)})")
    if evaluations:
        print(_table([[e["id"], e["selection_id"], e["mode"], "" if e["accuracy"] is None else f"{100 * e['accuracy']:.2f}%",
                       e["result"].get("n_train", ""), _seconds(e["seconds"]), e["created"][:19]] for e in evaluations],
                     ["id", "selection", "mode", "test top-1", "trained on", "took", "created"]))
    return 0
