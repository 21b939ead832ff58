"""Evaluation as in the paper: a neutral judge, FID, novelty, pictures and a report. No Ray.

Modules, in the order an evaluation uses them:

    neutral.py   the neutral ResNet v1 judge: trained once, cached, scores generations
    fid.py       FID (torchmetrics) on Inception or the neutral model's features
    novelty.py   nearest training images by pixels, SSIM and features; copy flags
    stages.py    one function per stage (inputs, judge, generations, scores, FID, novelty),
                 typed results, each sampling stage with its own random stream
    figures.py   the report's pictures (matplotlib)
    report.py    report.html: the prose, tables and captions around the numbers
    evaluate.py  the orchestrator jobs/evaluate.py calls: the stages in order, then the files
"""
