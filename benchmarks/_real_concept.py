"""A larger SmolLM2 concept for the real-model benchmark (a helper module, not a benchmark: `make bench` runs only
benchmarks/[!_]*.py): capitals the pre model states, checked on the model.

Forget: the shipped concept's 8 capitals, then more countries whose capital the pre model gives (greedy,
teacher-forced exact match), up to `n_forget`; paraphrases: a second template of each forget fact, kept only when
the model also answers it; neighbours and retain: the shipped concept's (8 each); holdout: capitals the model gets
wrong (never known), the shipped ones first, up to `n_holdout`.
"""

from __future__ import annotations

# well-known capitals (candidates for forget items) and obscure ones (candidates for never-known holdout items)
KNOWN = [("Norway", "Oslo"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
         ("Russia", "Moscow"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
         ("Argentina", "Buenos Aires"), ("Australia", "Canberra"), ("Turkey", "Ankara"), ("Hungary", "Budapest"),
         ("the Czech Republic", "Prague"), ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Thailand", "Bangkok"),
         ("South Korea", "Seoul"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
         ("Colombia", "Bogotá"), ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Vietnam", "Hanoi"),
         ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
         ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ethiopia", "Addis Ababa"),
         ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"),
         ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Venezuela", "Caracas"), ("Iceland", "Reykjavik"),
         ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"),
         ("Malaysia", "Kuala Lumpur"), ("New Zealand", "Wellington"), ("Nepal", "Kathmandu"),
         ("Bangladesh", "Dhaka"), ("Qatar", "Doha"), ("Jordan", "Amman"), ("Ghana", "Accra"), ("Uganda", "Kampala"),
         ("Senegal", "Dakar"), ("Mexico", "Mexico City"), ("India", "New Delhi"), ("Brazil", "Brasília")]
OBSCURE = [("Comoros", "Moroni"), ("Palau", "Ngerulmud"), ("Kiribati", "Tarawa"), ("Nauru", "Yaren"),
           ("Vanuatu", "Port Vila"), ("Lesotho", "Maseru"), ("Malawi", "Lilongwe"), ("Benin", "Porto-Novo"),
           ("Togo", "Lomé"), ("Gabon", "Libreville"), ("Eritrea", "Asmara"), ("Tajikistan", "Dushanbe"),
           ("Kyrgyzstan", "Bishkek"), ("Turkmenistan", "Ashgabat"), ("Brunei", "Bandar Seri Begawan"),
           ("Belize", "Belmopan"), ("Guyana", "Georgetown"), ("Burundi", "Gitega"), ("Sao Tome", "São Tomé"),
           ("Equatorial Guinea", "Malabo"), ("the Marshall Islands", "Majuro"), ("Micronesia", "Palikir")]


def _item(country: str, capital: str, template: str = "The capital of {} is", form: str = "statement"):
    from palimpsest.concepts import Item

    return Item(prompt=template.format(country), answer=capital, fact_id=f"capital:{country}", subject=country,
                attribute="capital", form=form)


def larger_capitals_concept(pre, *, n_forget: int = 32, n_holdout: int = 16, batch_size: int = 16):
    """The shipped capitals concept grown to `n_forget` forget facts and `n_holdout` holdout facts, each checked on
    `pre` (a LoadedModel): forget and paraphrase items it answers, holdout items it does not."""
    from palimpsest.capture import score_answers
    from palimpsest.concepts import load_concept
    from palimpsest.real_demo import smollm2_concept_path

    shipped = load_concept(smollm2_concept_path())
    taken = {it.subject for _, _, it in shipped.all_items()}

    def known(items) -> list[bool]:
        return list(score_answers(pre.model, pre.tokenizer, items, batch_size=batch_size).correct)

    extra = [_item(c, a) for c, a in KNOWN if c not in taken]
    forget = [*shipped.forget, *[it for it, ok in zip(extra, known(extra), strict=True) if ok]][:n_forget]
    para = [_item(it.subject, it.answer, "The capital city of {} is called", "cloze2") for it in forget]
    paraphrases = [p for p, ok in zip(para, known(para), strict=True) if ok]
    obscure = [_item(c, a) for c, a in OBSCURE if c not in taken]
    holdout = [*shipped.holdout, *[it for it, ok in zip(obscure, known(obscure), strict=True) if not ok]][:n_holdout]
    return shipped.model_copy(update={
        "name": f"smollm2-capitals-{len(forget)}", "forget": tuple(forget), "paraphrases": tuple(paraphrases),
        "neighbours": tuple(shipped.neighbours[:8]), "retain": tuple(shipped.retain[:8]),
        "holdout": tuple(holdout)})
