"""The procedural generator: random scenes of three families, training samples with
simulated prompts, and DICOM series with their truth (docs/synthetic.md)."""
