"""Did the GAN make sounds of the right class? Score generated clips with the trained classifier.

    python evaluate_generated.py --model outputs/classifier.keras --generated outputs/generated \
        [--real-dir data/train] [--out outputs]

Generated clips are decoded with the classifier's own feature settings. Per class
and overall it reports:

- conditional accuracy: how often the classifier hears the class the clip was generated for;
- an inception-style score: exp(mean KL(p(y|x) || p(y))); 1 when every clip sounds
  alike, at most the number of classes when each is confidently one class and the
  classes are evenly covered;
- the Fréchet distance between the classifier's penultimate-layer embeddings of real
  clips and of generated clips (lower is closer to real);
- diversity: the mean distance between two clips of one class, in the same embedding
  space (a generator that makes one sound per class scores near 0).

With --real-dir (the GAN's training clips), the same figures for real clips the
classifier never trained on (its validation clips) give the reference line, with
diversity as a ratio to theirs, and a memorisation check: each generated clip's
distance to its nearest clip in --real-dir, beside each held-out real clip's
distance to its nearest other real clip. A generator that copies its training set
has generated clips far closer to a training clip than new real clips are
(`nearest_real_ratio` well below 1, a large share of `near_copies`). Writes
generation_report.json and generation_confusion_matrix.png to --out.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import linalg
from scipy.spatial.distance import pdist
from sklearn.neighbors import NearestNeighbors

import audio_data as ad
from train_classifier import keras, load_saved_model, plot_confusion  # noqa: E402  (keras imported quietly there)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="outputs/classifier.keras", help="classifier saved by train_classifier.py")
    p.add_argument("--generated", default="outputs/generated", help="generated clips, one folder per class")
    p.add_argument("--real-dir", help="real clips, one folder per class: the reference line")
    p.add_argument("--out", default="outputs", help="folder for the report and the confusion matrix")
    p.add_argument("--workers", type=int, default=None, help=ad.WORKERS_HELP)
    return p.parse_args(argv)


def inception_score(probs: np.ndarray) -> float:
    marginal = probs.mean(axis=0, keepdims=True)
    kl = (probs * (np.log(probs + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (as in FID).

    tr(sqrt(A B)) is taken as the sum of the square roots of the eigenvalues of the
    symmetric sqrt(A) B sqrt(A): exact, and stable for the rank-deficient covariances
    that a few dozen clips in 128 dimensions give (where sqrtm(A @ B) is not).
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = linalg.eigh(cov_a)
    sqrt_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean
    return float(max(distance, 0.0))  # rounding can leave identical sets a hair below zero


def diversity(emb: np.ndarray) -> float:
    """Mean Euclidean distance between two clips' embeddings (0 for fewer than two clips)."""
    return float(pdist(emb).mean()) if len(emb) > 1 else 0.0


def nearest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each query embedding's distance to its nearest reference embedding."""
    return NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(query)[0][:, 0]


def memorisation(generated_emb, held_out_emb, train_emb, real_emb) -> dict:
    """Generated clips' nearest-real distances beside held-out real clips' nearest-training distances.

    A generated clip may have copied any real clip the GAN saw (all of `real_emb`);
    a held-out clip is compared with the clips the classifier trained on (`train_emb`).
    `near_copies` is the share of generated clips closer to a real clip than 95% of
    new real clips are to theirs (about 0.05 for a generator that does not copy).
    """
    gen = nearest_distances(generated_emb, real_emb)
    new = nearest_distances(held_out_emb, train_emb)
    return {"generated_median": float(np.median(gen)), "held_out_median": float(np.median(new)),
            "nearest_real_ratio": float(np.median(gen) / max(np.median(new), 1e-12)),
            "near_copies": float((gen < np.quantile(new, 0.05)).mean())}


def with_embeddings(model) -> keras.Model:
    """The classifier, also giving its penultimate-layer embeddings; an ensemble of folds
    (train_classifier.py --folds) embeds with its first member."""
    member = next((layer for layer in model.layers if isinstance(layer, keras.Model)), model)
    embedder = keras.Model(member.inputs, member.get_layer("embedding").output)
    return keras.Model(model.inputs, [model.output, embedder(model.inputs[0])])


def embed(model, meta, root, args, desc):
    """Class probabilities, penultimate-layer embeddings and class indices of a folder-per-class tree.

    `model` is with_embeddings(classifier).
    """
    classes = meta["classes"]
    paths, labels = ad.find_labelled_clips(root)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        ad.warn(f"{root}: folders {', '.join(unknown)} are not classes of the classifier and are ignored")
    cfg = ad.FeatureConfig.from_dict(meta["features"])
    feats = ad.extract_features(paths, cfg, Path(args.out) / "cache", desc=desc, workers=args.workers)
    keep = [i for i in np.flatnonzero(feats.ok) if labels[i] in classes]
    if not keep:
        raise ad.DataError(f"no usable clips of the classifier's classes in {root}")
    probs, emb = model.predict(np.asarray(feats.x[keep]), batch_size=64, verbose=0)
    y = np.array([classes.index(labels[i]) for i in keep])
    return probs, emb, y, [paths[i] for i in keep]


def scores(probs, emb, y, classes, reference_emb=None) -> dict:
    """Overall and per-class figures; the Fréchet distance only where a reference is given."""
    def figures(mask):
        out = {"clips": int(mask.sum()), "conditional_accuracy": float((probs[mask].argmax(1) == y[mask]).mean()),
               "inception_score": inception_score(probs[mask]),
               "diversity": float(np.mean([diversity(emb[mask & (y == c)]) for c in np.unique(y[mask])]))}
        if reference_emb is not None and mask.sum() > 1:
            out["frechet_distance"] = frechet_distance(reference_emb, emb[mask])
        return out
    report = figures(np.ones(len(y), bool))
    report["per_class"] = {c: figures(y == i) for i, c in enumerate(classes) if (y == i).any()}
    return report


def run(args):
    ad.remove_stale_temporaries(args.out, Path(args.out) / "cache")
    classifier, meta = load_saved_model(args.model)
    model = with_embeddings(classifier)
    classes = meta["classes"]
    probs, emb, y, _ = embed(model, meta, args.generated, args, "generated")
    report = {"classes": classes}
    reference = None
    if args.real_dir:
        r_probs, r_emb, r_y, r_paths = embed(model, meta, args.real_dir, args, "real")
        held_out = np.array([str(p.resolve()) in set(meta.get("validation_files", [])) for p in r_paths])
        if held_out.sum() < 2 or held_out.all():
            ad.warn("no held-out (validation) clips of this classifier under --real-dir: the real reference "
                    "uses clips it trained on, and flatters the real side (train_classifier.py --val-split 0.2 "
                    "--ensemble 1 holds some out)")
            held_out = np.ones(len(r_y), bool)
            reference = r_emb
        else:
            reference = r_emb[~held_out]
        report["real_held_out"] = scores(r_probs[held_out], r_emb[held_out], r_y[held_out], classes, reference)
    report["generated"] = scores(probs, emb, y, classes, reference)
    if reference is not None:
        real = report["real_held_out"]
        for part in [report["generated"], *report["generated"]["per_class"].values()]:
            part["relative_diversity"] = part["diversity"] / max(real["diversity"], 1e-12)
        if not held_out.all():
            report["memorisation"] = memorisation(emb, r_emb[held_out], r_emb[~held_out], r_emb)
    out = Path(args.out)
    with ad.atomic_output(out / "generation_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    plot_confusion(y, probs.argmax(1), classes, out / "generation_confusion_matrix.png", title="generated clips",
                   ylabel="conditioning class", xlabel="classifier's prediction")
    print_table(report)
    print(f"wrote {out / 'generation_report.json'} and {out / 'generation_confusion_matrix.png'}")


def print_table(report):
    rows = [("generated", report["generated"])] + ([("real held-out", report["real_held_out"])]
                                                    if "real_held_out" in report else [])
    print(f"\n{'':15}{'clips':>7}{'accuracy':>10}{'IS':>8}{'Fréchet':>10}{'diversity':>11}")
    for name, r in rows:
        fd = f"{r['frechet_distance']:10.2f}" if "frechet_distance" in r else f"{'-':>10}"
        print(f"{name:15}{r['clips']:7d}{r['conditional_accuracy']:10.3f}{r['inception_score']:8.2f}{fd}"
              f"{r['diversity']:11.3f}")
    print(f"(IS at most {len(report['classes'])}; Fréchet distance to real training clips, lower is closer; "
          f"diversity: mean distance between two clips of a class)")
    if "memorisation" in report:
        m = report["memorisation"]
        print(f"memorisation: median distance to the nearest real clip {m['generated_median']:.3f} (generated) vs "
              f"{m['held_out_median']:.3f} (new real clips), ratio {m['nearest_real_ratio']:.2f}; "
              f"near copies {m['near_copies']:.0%} (about 5% when nothing is copied)")


def main(argv=None) -> int:
    return ad.run_script(run, parse_args(argv), interrupted_hint="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
