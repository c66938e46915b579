"""The first 20 steps of the quickstart recipe on the bundled model, pinned to the bit on CPU.

Any change to data generation, rendering, masking, packing, the loss, LoRA initialisation, the
optimizer, the schedule or the data order shows here as a changed number. The reference was
recorded before the stage refactor (issue 9) and held through it; it was re-pinned once, for the
switch to fused AdamW (losses moved by at most 2.7e-4 relative over the 20 steps). To re-pin after an
intended numeric change: TUNESMITH_REPIN=1 pytest tests/test_pinned_trajectory.py.
"""

import json
import os
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart_first20_losses.json"
STEPS = 20


def quickstart_losses(tmp_path) -> list[float]:
    from tunesmith.models import load_model_and_tokenizer
    from tunesmith.stages.prepare import prepare_data
    from tunesmith.stages.recipe import load_recipe
    from tunesmith.stages.train import setup_model
    from tunesmith.train.loop import train
    from tunesmith.ui import quiet

    recipe = load_recipe("recipes/quickstart.yaml", {"output.dir": str(tmp_path / "run")})
    model, tokenizer = load_model_and_tokenizer(recipe.model, log=quiet)
    data = prepare_data(recipe.data, recipe.curate, recipe.select, recipe.model, tokenizer, None)
    model = setup_model(model, recipe.train)
    result = train(model, data.train_samples, recipe.train, None, stop_after=STEPS)
    return result.losses


def test_quickstart_first_20_steps_are_bit_identical(tmp_path):
    losses = quickstart_losses(tmp_path)
    assert len(losses) == STEPS
    if os.environ.get("TUNESMITH_REPIN"):
        FIXTURE.write_text(json.dumps({"losses_hex": [float(x).hex() for x in losses], "losses": losses}, indent=1))
    pinned = json.loads(FIXTURE.read_text())["losses_hex"]
    assert [float(x).hex() for x in losses] == pinned
