"""The shrunk SAM2.1 of the tests (random weights): utils/sam2_model.py `SHRUNK_OVERRIDES`."""
from utils.sam2_model import SAM2_1_MODELS, SHRUNK_OVERRIDES as TINY_OVERRIDES  # noqa: F401 (the tests' names)

TINY_CFG = SAM2_1_MODELS["tiny"][0]


def score_targets(engine, reference, frames, with_masks=True):
    """Every frame scored as the target of the pseudo-video [reference's frames, frame]."""
    return engine.score_pairs([reference] * len(frames), frames, with_masks)
