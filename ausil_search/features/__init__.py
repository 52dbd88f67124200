"""Audio → segment descriptors: the log-mel and its segments (`spectrogram`), the CNN (`backbone`), and
`extraction` for many files at once (worker processes, per-run `scratch` directories).
"""
