"""The shipped initializations load (sha256 verified, card complete) and reach their card's figures
again on a smaller evaluation of the same meta-test tasks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app.checkpoint import load_card
from app.evaluation import Protocol, evaluate_model, load_model

MODELS = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "models").glob("*/card.json"))
SMALL = 100


def test_the_sinusoid_and_glyphs_initializations_are_shipped() -> None:
    assert {"sinusoid", "glyphs"} <= {m.name for m in MODELS}


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_a_shipped_model_reaches_its_cards_figures(model: Path, glyphs_cache: Path) -> None:
    card, learner, params = load_model(model)
    assert card["training"]["complete"] and card["metrics"], "ship only finished, evaluated models"
    assert set(params) >= {k for k, _ in learner.net.named_parameters()}
    for key, recorded in card["metrics"].items():
        protocol = Protocol(**{**recorded["protocol"], "tasks": SMALL})
        found = evaluate_model(model, protocol, glyphs_cache)["metaserve"]
        for metric, estimate in found.items():
            expected = recorded["metaserve"][metric]
            # Both are estimates of the same mean over overlapping tasks: they must agree within their CIs.
            tolerance = math.hypot(estimate.ci95, expected["ci95"])
            assert abs(estimate.mean - expected["mean"]) <= tolerance, (key, metric, estimate, expected)
    assert load_card(model)["sha256"] == card["sha256"]
