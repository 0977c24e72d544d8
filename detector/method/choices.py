"""The method's vocabulary: every option's allowed values, named once (the first value is the public code's).

Torch-free and importing nothing, so ``detector.config`` checks a ``TrainConfig`` against these lists without
loading the method, and the method modules (prompts, losses, regions, model) dispatch on the same names.
docs/FIDELITY.md says what each value computes.
"""
from __future__ import annotations

GATE_MODES = ("tokens", "features")  # MLLP gates: on the token embeddings (public) | on the text features
PROTOTYPES = ("raw_mean", "unit_mean")  # a group's prototype: mean of raw features (public) | of unit ones
REGION_WEIGHTINGS = ("features", "loss")  # MLSA region weights scale the tokens (public) | weight the loss mean
TRIPLET_DISTANCES = ("squared", "euclidean")
COMPOSITIONS = ("public", "cosine")  # the composition regulariser's form
IMAGE_GROUPS = ("all", "image")  # the CLS trained against every region group (public) | the image group
IMAGE_SCORE_GROUPS = ("matched", "image")  # the CLS text score from the matched group (public) | the image group
IMAGE_VISUAL_MAX = ("upsampled", "grid")  # the image score's visual max over the upsampled map (public) | the grid
REGION_ASSIGN = ("nearest", "parent")  # DPC-KNN: a token joins its nearest centre (public) | its parent's cluster
REGION_MATCH = ("token_mean", "feature_mean")  # component -> cluster by its mean token (public) | mean feature
TAU_MODES = ("stored", "exp")  # CLIP's stored log-space logit scale (public) | its exp capped at 100; or a number
COMPONENT_TEXTS = ("one", "all")  # a component's handcrafted abnormal texts: one seeded draw (public) | every one
VV_BLOCK_WORDS = ("all", "half")  # blocks with a V-V branch: every block (public) | the second half; or a count
BASELINES = ("promptad",)

# the caption levels a prompt group belongs to (MFSC's views); the region groups MLSA aligns with token regions are
# the image, the background and each component (prompts.py builds the groups, regions.py and defects.py read them)
IMAGE = "image"
BACKGROUND = "background"
COMPONENT = "component"
ATTRIBUTE_LEVELS = ("relation", "colour", "texture", "shape")
LEVELS = (IMAGE, BACKGROUND, COMPONENT, *ATTRIBUTE_LEVELS)  # class-name prompts, no regions (TrainConfig.baseline None = FineGrainedAD)

CHOICES: dict[str, tuple[str, ...]] = {  # TrainConfig field -> its allowed values
    "gate_mode": GATE_MODES,
    "prototype": PROTOTYPES,
    "region_weighting": REGION_WEIGHTINGS,
    "triplet_distance": TRIPLET_DISTANCES,
    "composition": COMPOSITIONS,
    "image_groups": IMAGE_GROUPS,
    "image_score_group": IMAGE_SCORE_GROUPS,
    "image_visual_max": IMAGE_VISUAL_MAX,
    "region_assign": REGION_ASSIGN,
    "region_match": REGION_MATCH,
    "component_texts": COMPONENT_TEXTS,
}
