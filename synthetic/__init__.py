"""Synthetic audio-text data with known event times, for the demo, the tests and the benchmarks.

Stands alone (numpy, scipy, soundfile): `events` makes sounds and clips, `captions` describes them, `layouts`
writes them in the official raw layouts that the real converters in `shards.sources` read.
"""
