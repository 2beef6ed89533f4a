"""Entry points of dossier-engine: the `dossier` command, its settings and the wiring of
engine, storage and Kafka adapters. Nothing here builds a client or engine at import time."""
