"""Where a feature stage's shards run beyond its own process: the engine choice (config), one
round's shared folder (run), the worker (worker), and the engines (engines: SLURM, Ray)."""
