"""Behaviour: accuracy on the forget class's and on the other classes' held-out images, pre vs post (vs floor)."""

from __future__ import annotations

from palimpsest.types import AuditConfig, Result, inconclusive
from palimpsest.vision.analysers.common import logits_of
from palimpsest.vision.registry import register_vision


@register_vision
class Behaviour:
    name = "behaviour"
    kind = "behaviour"
    title = "Behaviour (classification accuracy)"
    description = ("Accuracy of each model on the held-out test images of the forget class and of the other classes. "
                   "The forget class counts as forgotten when the post model's accuracy on it is low; the retain "
                   "accuracy measures collateral damage.")

    def run(self, pair, concept, acts, config: AuditConfig) -> Result:
        x, y = acts.data.test_x, acts.data.test_y
        forget = y == pair.forget_class
        if int(forget.sum()) < config.min_items:
            return inconclusive(self.name, f"only {int(forget.sum())} forget-class test images", kind="behaviour")
        summary, preds = {}, {}
        for model_name, loaded in pair.models().items():
            pred = logits_of(loaded.model, x).argmax(-1)
            preds[model_name] = pred
            summary[f"forget_acc_{model_name}"] = float((pred[forget] == y[forget]).float().mean())
            summary[f"retain_acc_{model_name}"] = float((pred[~forget] == y[~forget]).float().mean())
        summary["n_forget_images"] = int(forget.sum())
        summary["n_retain_images"] = int((~forget).sum())
        index = acts.data.test_index
        per_item = [{"image": int(index[i]), "label": int(y[i]),
                     **{f"pred_{m}": int(p[i]) for m, p in preds.items()}} for i in forget.nonzero().flatten()]
        s = summary
        evidence = (f"forget-class accuracy {s['forget_acc_pre']:.2f} -> {s['forget_acc_post']:.2f}; other classes "
                    f"{s['retain_acc_pre']:.2f} -> {s['retain_acc_post']:.2f}")
        return Result(name=self.name, kind="behaviour", summary=summary, per_item=per_item, evidence=evidence,
                      tables={"accuracy": [{"model": m, "forget class": s[f"forget_acc_{m}"],
                                            "other classes": s[f"retain_acc_{m}"]} for m in preds]})
