"""The library behind the scripts at the top, in the order of the pipeline:

    cli, device, files   what every script shares: one-line errors and flags, the device, whole-file writes
    data                 MNIST fetched and verified, the fixed 54k/6k split, tensors on the device
    runs                 what a run is (ModelConfig, TrainConfig), its name and its file
    checkpoints          a run's checkpoint: format, save cadence, random states, loading, lock, discovery
    step                 one training step and one epoch (train.py and bench.py)
    training             a sweep's runs trained one after another (train.py, once its flags are read)
    sweep                a sweep's progress, the signals that stop it, and what it says then (train.py)
    metrics              the measurements, shared by training and evaluation
    evaluation           a run's results entry, measured or read from its cache (evaluate.py)
    classifier           the digit classifier used as a measuring instrument, and the Frechet distance
    stats                a results.json's summary: means over seeds, the latent-size selection rule
    published            the study's and the literature's numbers that ours are set beside
    report               every table of results.md and of the docs
    plots                the plots of the numbers
    figures              the figures of the checkpoints: curves, reconstructions, decodings (visualize.py)
    launch               a sweep as jobs through submitit (train.py --launcher)
    explorer_page        the latent explorer's data, into its template explorer.html

The model itself is models.py, at the top. Nothing here imports a script.
"""
