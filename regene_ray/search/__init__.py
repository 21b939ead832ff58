"""Architecture search: depth, convs per block, latent width and sparsity, trading classifier
accuracy (max) against decoder reconstruction MAE (min), on Ray Tune + Optuna.

Modules, in the order a sweep uses them:

    space.py    search spaces (YAML) -> typed RunConfigs, and the smoke-test space
    sweep.py    the sweep's options, trials at once, its folder's claim, record and resume checks
    trial.py    one trial: classifier then decoder training, reporting every epoch (plain torch)
    study.py    Optuna: distributions, the seeded sampler, searcher state without its storage
    moasha.py   multi-objective successive halving: rungs, decisions and their YAML state
                (promotes by non-dominated sort and crowding over accuracy and an early MAE)
    pareto.py   non-dominated sorting, crowding, knee point, hypervolume and the paper's pick
                from the front (pure numpy)
    searcher.py Tune's searcher: OptunaSearch on the study above, and the search algorithm
                that a resume brings in line with the trial list it restores (imports Ray)
    tuner.py    the Tune trainable, schedulers and callback around the modules above, and
                run_sweep (with searcher.py, the only modules here that import Ray)
    sync.py     the driver's local copy of a sweep on remote storage
    outputs.py  trials.parquet (with hypervolume history), pareto.parquet, pareto.png,
                hypervolume.png, best_config.yaml (knee point in its comments), summary.json
"""
