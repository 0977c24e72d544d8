"""Integrations of FineGrainedAD into other tools (the top layer: may use everything of ``detector`` but the CLI).

``detector.integrations.anomalib``: the anomalib model (``anomalib fit --model
detector.integrations.anomalib.FineGrainedAD``); it needs the optional extra ``finegrained-ad[anomalib]``.
Nothing here is imported by ``import detector``.
"""
