"""Architecture search: depth, convs per block, latent width and sparsity, trading classifier
accuracy (max) against decoder reconstruction MAE (min), on Ray Tune + Optuna.

Modules, in the order a sweep uses them:

    space.py    search spaces (YAML) -> typed RunConfigs, and the smoke-test space
    pareto.py   non-dominated sorting and the paper's pick from the front (pure numpy)
    tuner.py    the only module here that imports Ray: the trainable, the searcher, the sweep
    sync.py     the driver's local copy of a sweep on remote storage
    outputs.py  trials.parquet, pareto.png, best_config.yaml, summary.json (pure pandas)
"""
