"""Media in: which files are media and where they are (`scan`, `sources`), decoding to mono float32 (`audio`),
and, for benchmarks and training, the audio transformations (`augment`) and writing real media files (`writer`).
"""
