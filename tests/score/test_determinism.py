"""A scan's result does not depend on which process scored it: thread counts, a Dask worker's own
precision, or the reconstruction cache never change a map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medidiff.score.config import ScoreConfig, load_score_config
from medidiff.score.reconstruct import Reconstructor
from medidiff.model.store import load_model


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reconstruction_does_not_depend_on_thread_count(tiny_model_dir, precision):
    """oneDNN's fp32 1x1x1 convolution split its channel sum by thread count: a local run (all cores) and
    a Dask worker (cores / N) gave fp32 maps differing in the last bits. Scoring uses power-of-two
    thread counts (an elementwise op split in 3 computes its chunk edges differently)."""
    from medidiff.runtime import cpu_bf16_supported

    if precision == "bf16" and not cpu_bf16_supported():
        pytest.skip("this CPU has no bf16")
    loaded = load_model(tiny_model_dir)
    rec = Reconstructor(loaded, ScoreConfig(precision=precision, n_draws=4, batch_size=4))
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    prev = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            out.append(rec.reconstruct(image).mean)
    finally:
        torch.set_num_threads(prev)
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    assert torch._C._get_mkldnn_enabled()  # the hooks restore the global switch


def test_scoring_threads_are_a_power_of_two(monkeypatch):
    from medidiff.runtime import set_threads

    prev = torch.get_num_threads()
    try:
        for given, used in ((1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (12, 8)):
            monkeypatch.setenv("MEDIDIFF_THREADS", str(given))
            assert set_threads(power_of_two=True) == used == torch.get_num_threads()
        assert set_threads(threads=3) == 3  # training and the rest keep what they ask for
    finally:
        torch.set_num_threads(prev)


def test_worker_computes_in_the_clients_precision(tiny_model_dir, monkeypatch):
    """A worker that resolved another precision than the client failed every scan ("give workers the same
    model folder"); it now takes the client's resolved precision, or says it cannot run it."""
    import medidiff.runtime as rt
    from medidiff.batch.scorer import calibration_fingerprint, load_scorer
    from medidiff.batch.cluster import RemoteJob, _SCORERS, _worker_scorer

    monkeypatch.setattr(rt, "cpu_bf16_supported", lambda: False)  # the client: a CPU without bf16
    client = load_scorer(tiny_model_dir, overrides=("score.n_draws=1",), log=lambda m: None)
    assert client.reconstructor.precision == "fp32"
    run_info = {"model_hash": client.loaded.model_hash, "config_hash": client.settings_hash(),
                "calibrated": client.calibration_applied,
                "calibration_id": calibration_fingerprint(client.calibration_record) if client.calibration_applied
                else None}
    monkeypatch.setattr(rt, "cpu_bf16_supported", lambda: True)  # a worker with bf16: auto would pick bf16
    assert load_scorer(tiny_model_dir, overrides=("score.n_draws=1",), log=lambda m: None).settings_hash() \
        != run_info["config_hash"]
    job = RemoteJob(out=tiny_model_dir, run_info=run_info, modality="mri",
                    scorer_args=(str(tiny_model_dir), None, ("score.n_draws=1",), "cpu"),
                    scorer_options={"precision": client.reconstructor.precision})
    _SCORERS.clear()
    try:
        worker = _worker_scorer(job, torch_threads=1, worker_threads=1)
    finally:
        _SCORERS.clear()
        torch.set_num_threads(2)
    assert worker.reconstructor.precision == "fp32" and worker.settings_hash() == run_info["config_hash"]

    # the other way round: a worker that cannot run the client's precision says so, in one line
    monkeypatch.setattr(rt, "cpu_bf16_supported", lambda: False)
    with pytest.raises(RuntimeError, match="cannot compute in bf16.*score.precision=fp32"):
        Reconstructor(load_model(tiny_model_dir), ScoreConfig(), precision="bf16")


def test_window_overlap_is_part_of_the_reconstruction_cache_key():
    """A benchmark variant changing only the sliding-window overlap reused the old reconstructions."""
    from medidiff.score.cache import first_pass_cache
    from medidiff.score.pipeline import Scorer

    class Loaded:  # what the cache key reads, without a network: the key must differ before any compute
        model_hash = "m"
        preprocess_config = None

    calls = []

    class FakeRec:
        def __init__(self, overlap):
            self.overlap = overlap

        def runtime_settings(self):
            return {"precision": "fp32", "device": "cpu"}

        def reconstruct(self, image, seed=None, fractions=None):
            calls.append(self.overlap)
            return type("R", (), {"mean": image, "n_evals": 1})()

    import medidiff.score.pipeline as pl

    pre = type("P", (), {"image": np.zeros((4, 4, 4), np.float32)})()
    with first_pass_cache():
        for overlap in (None, 0.5, 0.5, 0.75):
            s = Scorer.__new__(Scorer)
            s.loaded, s.cfg, s.pcfg = Loaded(), load_score_config(None, [f"score.window_overlap={overlap}"]
                                                                   if overlap is not None else []), None
            s.reconstructor = FakeRec(overlap)
            orig = pl.preprocessed
            pl.preprocessed = lambda volume, pcfg: (pre, "scan-key")
            try:
                s._reconstructions(None, None)
            finally:
                pl.preprocessed = orig
    assert calls == [None, 0.5, 0.75]
