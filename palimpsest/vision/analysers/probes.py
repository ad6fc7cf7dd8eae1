"""Linear probes (forget class vs rest) trained on the pre model's features, scored on the post model's."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import FLOOR_SOURCE, calibrated_result, labels
from palimpsest.vision.registry import register_vision


def _balanced_weights(is_pos: np.ndarray) -> np.ndarray:
    """Per-image weights whose weighted mean of correctness is the balanced accuracy (so it can be bootstrapped)."""
    n, n_pos = len(is_pos), int(is_pos.sum())
    return np.where(is_pos, n / (2 * n_pos), n / (2 * (n - n_pos)))


@register_vision
class Probes:
    name = "probes"
    kind = "residue"
    title = "Linear probes (forget class vs rest)"
    description = ("Per layer, a logistic-regression probe (scikit-learn) separating the forget class from the other "
                   "classes is trained on the pre model's features of the training images, then applied unchanged to "
                   "each model's features of the held-out images. Score = balanced accuracy, averaged over layers. "
                   "Residue = post's score between the floor model's (an independently seeded oracle) and pre's.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        c = float(config.option(self.name, "C", 1.0))
        y_train = (labels(acts, "train") == pair.forget_class).numpy()
        y_test = (labels(acts, "test") == pair.forget_class).numpy()
        if y_test.sum() < config.min_items:
            return inconclusive(self.name, f"only {int(y_test.sum())} forget-class test images")
        weights = _balanced_weights(y_test)
        models = [m for m in ("pre", "post", "floor") if m in pair.models()]
        per_model = {m: [] for m in models}
        rows = []
        for site in acts.sites:
            probe = acts.memo(("probe", id(pair.pre.model), site, c), lambda site=site: make_pipeline(
                StandardScaler(), LogisticRegression(C=c, max_iter=2000, class_weight="balanced")).fit(
                    acts.flat("pre", "train", site).numpy(), y_train))
            row = {"site": site}
            for m in models:
                pred = probe.predict(acts.flat(m, "test", site).numpy())
                per_image = (pred == y_test) * weights
                per_model[m].append(per_image)
                row[f"balanced_acc_{m}"] = float(per_image.mean())
            rows.append(row)
        values = {m: np.mean(per_model[m], axis=0) for m in models}
        if "floor" in values:
            floor, source = values["floor"], FLOOR_SOURCE
        else:
            floor, source = 0.5, "chance (balanced accuracy 0.5)"
        summary = {f"balanced_acc_{m}": float(v.mean()) for m, v in values.items()}
        summary["sites"] = list(acts.sites)
        return calibrated_result(self.name, values["post"], floor, values["pre"], config, floor_source=source,
                                 summary=summary, evidence_what="pre-trained probes' balanced accuracy on post features",
                                 tables={"per_layer": rows})
