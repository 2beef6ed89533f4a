"""Tools around the engine: the simulator and its publishers, the report, the catalogue
importer, the process supervisor of the main job and the tests. The command line and the
benchmarks use them; nothing of the engine imports them."""
