"""The verdict as a measured classifier: `palimpsest validate` over 4 organism worlds x 2 forget sets.

Thresholds are fitted on worlds 0-1 and tested on worlds 2-3. Met only with held-out accuracy >= 0.95 and zero
false `deleted` (a suppressed case called deleted) over all cases. `--write-defaults` stores the fitted thresholds
(with this run as their source) in palimpsest/data/verdict_fit.json, the defaults of AuditConfig.
Usage: python benchmarks/validity.py [--out DIR] [--write-defaults]. The last line is the JSON result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import result_line  # noqa: E402

WORLDS, FORGET_SETS, TARGET = 4, 2, 0.95
FIT_FILE = Path(__file__).resolve().parent.parent / "palimpsest" / "data" / "verdict_fit.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="out/validity")
    parser.add_argument("--write-defaults", action="store_true")
    args = parser.parse_args()

    from palimpsest.validate.runner import run_validation

    started = time.perf_counter()
    report = run_validation(args.out, worlds=WORLDS, forget_sets=FORGET_SETS,
                            progress=lambda message, done=0: print(message, flush=True))
    seconds = time.perf_counter() - started
    held, overall = report["held_out"]["summary"], report["summary"]
    accuracy = held["accuracy"] or 0.0
    false_deleted = report["fitted_all"]["summary"]["false_deleted"]
    if args.write_defaults:
        from palimpsest.io import atomic_write_text

        source = {"run": "benchmarks/validity.py", "worlds": WORLDS, "forget_sets": FORGET_SETS,
                  "fit_worlds": report["fit"]["train_worlds"], "test_worlds": report["held_out"]["worlds"],
                  "held_out_accuracy": accuracy, "held_out_cases": held["n"], "false_deleted_all": false_deleted,
                  "kernels": report["kernels"], "date": datetime.date.today().isoformat(),
                  "criterion": report["fit"]["criterion"]}
        atomic_write_text(FIT_FILE, json.dumps({"values": report["fit"]["values"], "source": source}, indent=2))
        print(f"wrote {FIT_FILE}")
    print(f"{overall['n_cases']} cases in {seconds:.0f} s; run-config accuracy {overall['accuracy']}; "
          f"fitted {report['fit']['values']}; held-out accuracy {accuracy} on {held['n']} cases")
    by_truth = {t: row["accuracy"] for t, row in held["by_truth"].items()}
    aucs = {name: row.get("auc") for name, row in report["analyser_auc"].items()}
    standard = {name: row.get("auc") for name, row in report.get("standard_metric_auc", {}).items()}
    print(result_line("validity", round(accuracy, 4), f">= {TARGET}", accuracy >= TARGET and false_deleted == 0,
                      false_deleted=false_deleted, false_suppressed=report["fitted_all"]["summary"]["false_suppressed"],
                      cases=overall["n_cases"], scored=overall["n"], by_truth=by_truth, analyser_auc=aucs,
                      standard_metric_auc=standard,
                      run_config_accuracy=overall["accuracy"], seconds=round(seconds, 1)))


# output contract: the last line printed is the JSON result {"benchmark", "ratio", "target", "met", ...} (result_line)
if __name__ == "__main__":
    main()
