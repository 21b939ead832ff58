"""Evaluation as in the paper: a neutral judge, FID, fidelity and diversity, novelty, pictures
and a report.

Modules, in the order an evaluation uses them (only stream.py imports Ray):

    inputs.py       the run (data, generator, metrics) and the generations: a --generated
                    folder (read by regene_ray.generated) or an in-process sample
    streams.py      every sampling stage's own random stream, derived in one place
    neutral.py      the neutral judge (the shared ResNet, regene_ray.resnet): cached, scores
    fid.py          FID (torchmetrics) on Inception or the neutral model's features
    fidelity.py     precision, recall, density, coverage (prdc) of each generated set apart
    novelty.py      nearest training images by pixels, SSIM and features; copy flags
    stages.py       the measurements, one function each with a typed result: judge, scores,
                    acceptance, FID (Table 1), blends (Fig. 7b), novelty (Fig. 6)
                    (fidelity.py's stage runs on the FID stage's image sets)
    autoencoder.py  Fig. 3's contrast: an autoencoder trained through regene_ray.loop
    figure_data.py  what the other pictures show: interpolation strips, parents overlays, the
                    latent space in 2-D (embed_2d, the one embedding)
    figures.py      drawing (matplotlib): arrays in, PNG bytes out
    report.py       report.html: tables, figures and captions from the computed results
    evaluate.py     the orchestrator jobs/evaluate.py calls: the stages in order, then the files
    cas.py          the train-on-generated protocol (jobs/train_on_generated.py): seeds,
                    selection on the holdout split, one test per kept model
    stream.py       Ray Data: generated folders streamed as training batches
                    (jobs/train_on_generated.py)
"""
