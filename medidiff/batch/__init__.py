"""The scoring engine: runs the method (:mod:`medidiff.score`) over folders of scans.

Arrows point one way: the engine imports the method, never the reverse.

* :mod:`.run`        — ``score_folder``: discover, shard, skip finished scans, score the rest
* :mod:`.job`        — one scan into OUT (result.json last; failures recorded, never raised)
* :mod:`.output`     — the output folder: run.json, tables, summary.json
* :mod:`.scorer`     — the model, its method and its calibration as a run applies them
* :mod:`.calibrate`  — ``calibrate_model``: the method's calibration over a folder of healthy scans
* :mod:`.cluster`    — the same jobs on Dask workers (``--cluster``)
"""
