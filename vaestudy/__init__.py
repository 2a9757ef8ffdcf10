"""The library behind the scripts at the top, in the order of the pipeline:

    cli, device, files   what every script shares: one-line errors and flags, the device and TF32, whole-file writes
    datasets             each dataset declared once: its files and checksums, class names, where to get them
    data                 a dataset fetched and verified, the fixed 54k/6k split, tensors on the device
    runs                 what a run is (ModelConfig, TrainConfig), its name and its file
    checkpoints          a run's checkpoint: format, save cadence, random states, loading, lock, discovery,
                         and the check that no run a user has is replaced unasked
    step                 one training step and one epoch (train.py and bench.py)
    training             a sweep's runs trained one after another (train.py, once its flags are read)
    sweep                a sweep's progress, the signals that stop it, and what it says then (train.py)
    metrics              the measurements, shared by training and evaluation
    evaluation           a run's results entry, measured or read from its cache (evaluate.py)
    classifier           the classifier of a dataset's classes, a measuring instrument, and the Frechet distance
    stats                a results.json's summary: means over seeds, the selection rule, Welch's test, Holm
    published            the study's and the literature's numbers that ours are set beside
    report               every table of results.md and of the docs
    plots                the plots of the numbers
    figures              the figures of the checkpoints: curves, reconstructions, decodings (visualize.py)
    launch               a sweep as jobs through submitit (train.py --launcher)
    speed                timing, rooflines and profiles of an epoch and of the NLL estimate (bench.py)
    explorer_page        the latent explorer's data, into its template explorer.html

The model itself is models.py, at the top. Nothing here imports a script.
"""
