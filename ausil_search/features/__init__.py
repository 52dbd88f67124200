"""Audio → segment descriptors: the log-mel and its segments (`spectrogram`), the CNN (`backbone`),
`extraction` (the one path → descriptors pipeline, for one file or many: worker processes, per-run
`scratch` directories), and `feature_files` (descriptors stored by `extract`, read back as they are).
"""
