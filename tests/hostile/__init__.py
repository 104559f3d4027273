"""Hostile inputs for the fault-injection and fuzz tests: models, images, options, output folders,
all generated at test time by seeded code (tests/hostile/data holds one 429-byte CMYK JPEG)."""
