"""Evaluation as in the paper: a neutral judge, FID, novelty, pictures and a report. No Ray.

Modules, in the order an evaluation uses them:

    neutral.py   the neutral ResNet v1 judge: trained once, cached, scores generations
    fid.py       FID (torchmetrics) on Inception or the neutral model's features
    novelty.py   nearest training images by pixels, SSIM and features; copy flags
    figures.py   the report's pictures
    report.py    the self-contained report.html
    evaluate.py  jobs/evaluate.py's whole evaluation: reads, measures, writes metrics + report
"""
