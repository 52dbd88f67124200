"""One pipeline for "the descriptors of this path": training, index, query and the release commands
get the same bits for the same file (features.extraction), and feature files come back as stored."""

from __future__ import annotations

import numpy as np
import pytest

from ausil_search.engine import SearchEngine
from ausil_search.evaluate.formats import ListEntry, save_feature_file
from ausil_search.evaluate.release import FeatureSource
from ausil_search.features.extraction import signal_descriptors
from ausil_search.media.audio import load_audio
from ausil_search.model import AuSiLModel
from ausil_search.train.descriptors import DescriptorCache, DescriptorSource
from media import synth_music, write_audio_file

SR = 44100


def test_training_engine_and_release_descriptors_are_identical(model_path, tmp_path):
    model = AuSiLModel.load(model_path)
    long = tmp_path / "long.mp3"  # a lossy codec, many decode chunks, longer than one 2**20-sample slice
    write_audio_file(long, synth_music(26.0, SR, seed=41), SR)
    short = tmp_path / "short.wav"
    write_audio_file(short, synth_music(4.0, SR, seed=42), SR)
    engine = SearchEngine(tmp_path / "index", model=model_path, writable=True, device="cpu", workers=1)
    try:
        extractor = engine.extractor()
        queried = {path: extractor.descriptors(path).descriptors for path in (long, short)}  # as a query
        indexed = {video.path: video.descriptors for video in extractor.run([long, short])}  # as indexing: a worker process
    finally:
        engine.close()

    with DescriptorCache(None, "test") as cache:
        source = DescriptorSource(model.backbone, model.frontend, cache)
        for path in (long, short):
            trained = source.of_file(path)
            assert trained.dtype == np.float32 and len(trained) > 1
            assert np.array_equal(trained, queried[path]) and np.array_equal(trained, indexed[path])
        # the start of a file (fit-whitening --max-seconds) is the file's audio cut there
        start = source.of_file(long, max_seconds=10.0)
        cut = signal_descriptors(load_audio(long, SR)[: 10 * SR], source.encoder, model.frontend)
        assert np.array_equal(start, cut) and len(start) < len(queried[long])
        # a feature file (what `extract` writes) comes back as stored, on the training and the release side
        features = tmp_path / "long.npz"
        save_feature_file(features, queried[long])
        assert np.array_equal(source.of_file(features), queried[long])
        assert source.stats().segments_extracted == len(queried[long]) + len(queried[short]) + len(start)

    release = FeatureSource(model, lambda: pytest.fail("a feature file needs no network"))
    assert np.array_equal(release.descriptors(ListEntry("long", features)), queried[long])
