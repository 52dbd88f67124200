"""The release's steps and measurements: `release` (extract → similarity), its file `formats`, FIVR
`metrics` (mAP), and the `benchmark` generator (`ausil-search bench make`).
"""
