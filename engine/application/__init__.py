"""The application layer: a batch of consumed inputs in, one committed unit of work out.

It imports the domain (`engine.*`) and its own ports only; the wire codec, the stores and the
transports are handed in by the composition root (`dossier.composition`).
"""
