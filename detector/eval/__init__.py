"""What is made of a model's maps and scores: metrics (the one ``METRICS`` table), named defects, the
post-processing of a prediction, overlays and the HTML report. Imports the method, never store/run/deploy."""
