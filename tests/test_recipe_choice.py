"""The validation-split recipe choice: its rule, on hand-built rows."""

from experiments.recipe_choice import TIE_BAND, VARIANTS, choose


def _row(name: str, stage2: float, met: int = 3, open_bleu: float = 0.30, baseline_bleu: float = 0.25) -> dict:
    checks = [{"met": i < met} for i in range(3)]
    return {"variant": name, "checks": checks, "checks_met": met, "stage2_own": stage2,
            "open_bleu_1": open_bleu, "baseline_open_bleu_1": baseline_bleu}


def test_the_best_qualifying_stage_2_accuracy_wins():
    rows = [_row("sqrt_full", 0.70), _row("token_full", 0.72), _row("sqrt_cut", 0.78)]
    assert choose(rows)[0] == "sqrt_cut"


def test_a_tie_goes_to_the_variant_that_keeps_more_of_the_reference_text():
    order = [v.name for v in VARIANTS]
    assert order.index("sqrt_full") < order.index("sqrt_cut_if_carried") < order.index("sqrt_cut")
    rows = [_row("sqrt_cut_if_carried", 0.77), _row("sqrt_cut", 0.78)]
    assert TIE_BAND > 0.01 and choose(rows)[0] == "sqrt_cut_if_carried"
    rows = [_row("sqrt_cut_if_carried", 0.78 - TIE_BAND - 0.001), _row("sqrt_cut", 0.78)]
    assert choose(rows)[0] == "sqrt_cut"


def test_unmet_checks_or_collapsed_text_answers_disqualify():
    rows = [_row("sqrt_cut", 0.80, met=2), _row("token_full", 0.79, open_bleu=0.10),
            _row("sqrt_full", 0.70)]
    chosen, reason = choose(rows)
    assert chosen == "sqrt_full" and reason.startswith("1 of 3 variants qualify")
    assert choose([_row("sqrt_cut", 0.80, met=2)])[0] is None


def test_an_alignment_part_stays_unless_the_recipe_without_it_does_as_well():
    from experiments.recipe_choice import keeps_part

    chosen = _row("token_full", 0.77)
    assert keeps_part(_row("no_image_labels", 0.80, met=2), chosen)[0] is True
    assert keeps_part(_row("no_image_labels", 0.74), chosen) == (True, "without it stage 2 falls to 0.740 from 0.770")
    keep, why = keeps_part(_row("no_image_labels", 0.77), chosen)
    assert keep is False and why.endswith("not justified by these data")
