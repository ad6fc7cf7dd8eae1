"""`palimpsest validate`: the verdict measured over a population of ground-truth cases.

    from palimpsest.validate import run_validation
    report = run_validation("out/validate", worlds=4, forget_sets=2)   # DIR/index.html, DIR/validation.json
    report["held_out"]["summary"]["accuracy"], report["summary"]["false_deleted"], report["analyser_auc"]

cases.py: the population (worlds x forget sets x controls of known truth) and the behaviour gate on truth;
runner.py: builds, audits (parallel, resumable), scores; scoring.py: confusion, AUCs, threshold fitting (pure);
page.py: the HTML page.
"""

from palimpsest.validate.cases import CONSTRUCTION, CONTROLS, Case, gated_truth, population
from palimpsest.validate.runner import run_validation, score_population

__all__ = ["CONSTRUCTION", "CONTROLS", "Case", "gated_truth", "population", "run_validation", "score_population"]
