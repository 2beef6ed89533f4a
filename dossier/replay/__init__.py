"""Replay: rebuild a database from the inbound topics (`dossier.replay.kafka` and the serial
fold in `dossier.replay.serial`) or from another database's history, serially or in worker
processes (`dossier.replay.parallel`), through the same `BatchProcessor` the engine runs."""
