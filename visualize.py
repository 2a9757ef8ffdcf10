"""Draw the study's figures from the saved checkpoints, into output/Autoencoder/ and output/VAE/.

    python visualize.py                          # loss curves, reconstructions and decoded samples for every model
    python visualize.py --dataset fashion-mnist  # the same for the Fashion-MNIST runs, under output/fashion-mnist/

A variant of the study (vaestudy/runs.py) gets the same figures in its own folder, e.g. output/VAE/beta_0.5/.
"""
import os
import sys

from vaestudy.cli import ArgumentParser, add_place_flags, check_seeds, next_steps, out_flag, run_cli


def get_args(argv=None):
    p = ArgumentParser(__doc__)
    add_place_flags(p, "where figures go, and where results.json is read", checkpoints=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the decoded random samples (default: 0)")
    args = p.parse_args(argv)
    check_seeds(seed=args.seed)
    return args


def main(argv=None):
    args = get_args(argv)  # before PyTorch and matplotlib are imported (3 s here): --help answers at once
    from models import MODEL_NAMES
    from vaestudy import explorer_page
    from vaestudy.checkpoints import load_runs
    from vaestudy.data import load_splits
    from vaestudy.datasets import DATASETS, dataset_folder
    from vaestudy.device import pick_device
    from vaestudy.figures import comparison_indices, draw, read_selection, selected_latent
    from vaestudy.runs import group_label, variant_folder, variant_label

    device, dataset = pick_device(args.device), DATASETS[args.dataset]
    out = dataset_folder(args.out, args.dataset)  # MNIST's at the top; another dataset's in a folder of its own
    groups = {}  # {(model, variant): {latent: [runs, by seed]}}
    for run in load_runs(dataset_folder(args.checkpoints or args.out, args.dataset), device, args.dataset):
        groups.setdefault((run.config.model, run.variant), {}).setdefault(run.config.latent, []).append(run)
    split_seeds = {seeds[0].train.split_seed for by_latent in groups.values() for seeds in by_latent.values()}
    splits_by_seed = {s: load_splits(args.data_dir, s, device, fetch=False, dataset=dataset) for s in split_seeds}
    selection = read_selection(out,
                               [r.path for by_latent in groups.values() for rs in by_latent.values() for r in rs])
    selected, folders = {}, []  # {(model, variant): latent size}, for the figures and the explorer page
    for (kind, settings), seeds_by_latent in groups.items():
        splits = splits_by_seed[next(iter(seeds_by_latent.values()))[0].train.split_seed]
        name = group_label(MODEL_NAMES[kind], variant_label(settings))
        shown = splits["test"][0][comparison_indices(splits["test"][1])]
        selected[kind, settings] = selected_latent(selection, name, seeds_by_latent, splits["val"])
        folders.append(variant_folder(out, MODEL_NAMES[kind], settings))
        print(f"drawing {name}", file=sys.stderr)
        draw(name, seeds_by_latent, folders[-1], splits, shown, selected[kind, settings], args.seed, dataset)
    chosen = explorer_page.page_runs(groups, selected)
    page = os.path.join(out, "explorer.html")
    size = chosen and explorer_page.write_page(chosen, splits_by_seed[chosen[0][0].train.split_seed]["test"], page,
                                               dataset)
    print(f"wrote figures under {', '.join(folders)}" + (f", and {page} ({size / 2**20:.1f} MB)" if size else ""))
    results = os.path.join(out, "results.md")
    opened = ([f"{page}   the latent explorer: open it in a browser, drag through the latent space"] if size else [])
    opened += [f"{os.path.join(f, 'decoding_grid.jpg')}   what its decoder draws" for f in folders]
    opened += [f"{os.path.join(f, 'comparison_1.jpg')}   test {dataset.noun}s beside their reconstructions"
               for f in folders]
    opened.append(f"{results}   every measurement" if os.path.exists(results)
                  else f"python evaluate.py{out_flag(args.out, args.dataset)}   measures every run into {results}")
    next_steps(*opened)


if __name__ == "__main__":
    run_cli(main)
