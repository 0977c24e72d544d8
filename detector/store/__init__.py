"""What the detector reads and writes: file names and format tags, which outputs a command may replace,
the checkpoint folder (save/load), its card, thresholds, the resumable training state, data sets and captions,
the Hub. Imports the method and eval layers, never run/deploy."""
