"""Training: data preparation (:mod:`.data`), the loop (:mod:`.loop`), checkpoints (:mod:`.checkpoint`)
and the command (:mod:`.cli`, also ``python -m medidiff.train``).

Nothing is imported here: ``medidiff --help`` imports the command from :mod:`.cli` and must not
pull in torch."""
