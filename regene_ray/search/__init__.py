"""Architecture search: depth, convs per block, latent width and sparsity, trading classifier
accuracy (max) against decoder reconstruction MAE (min), on Ray Tune + Optuna.

Modules, in the order a sweep uses them:

    space.py    search spaces (YAML) -> typed RunConfigs, and the smoke-test space
    pareto.py   non-dominated sorting, crowding, knee point, hypervolume and the paper's pick
                from the front (pure numpy)
    moasha.py   multi-objective successive halving, a Ray Tune scheduler (promotes by
                non-dominated sort and crowding over accuracy and an early MAE estimate)
    tuner.py    the trainable, the searcher, the schedulers, the sweep (Ray Tune)
    sync.py     the driver's local copy of a sweep on remote storage
    outputs.py  trials.parquet (with hypervolume history), pareto.parquet, pareto.png,
                hypervolume.png, best_config.yaml (knee point in its comments), summary.json
"""
