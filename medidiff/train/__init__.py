"""Training: batches and augmentation (:mod:`.data`), the loop (:mod:`.loop`), resume state
(:mod:`.checkpoint`) and the command (:mod:`.cli`, also ``python -m medidiff.train``). Trained models
are saved and loaded by :mod:`medidiff.model.store`; healthy scan sets come from :mod:`medidiff.dataset`.

Nothing is imported here: ``medidiff --help`` imports the command from :mod:`.cli` and must not
pull in torch."""
