"""Score a submission CSV against an answer key (both ID,Class), as a competition would.

    python score_submission.py outputs/submission_cnn_v2.csv data/demo/test_labels.csv [--report]
"""
import argparse
import sys

import pandas as pd
from sklearn.metrics import accuracy_score, classification_report

MISSING = "(missing)"


def aligned(submission_csv, key_csv) -> tuple[pd.Series, pd.Series]:
    """(true, predicted) classes for every ID of the answer key; a missing ID is predicted ''."""
    key = pd.read_csv(key_csv, dtype=str)
    sub = pd.read_csv(submission_csv, dtype=str).drop_duplicates("ID").set_index("ID")["Class"]
    return key["Class"], key["ID"].map(sub).fillna("")


def score(submission_csv, key_csv) -> tuple[float, int]:
    """Accuracy over the answer key's IDs; an ID missing from the submission counts as wrong."""
    return accuracy_and_missing(*aligned(submission_csv, key_csv))


def accuracy_and_missing(true: pd.Series, predicted: pd.Series) -> tuple[float, int]:
    return accuracy_score(true, predicted), int((predicted == "").sum())


def confusions(true: pd.Series, predicted: pd.Series, top: int = 10) -> pd.DataFrame:
    """The commonest mistakes: clips per (true, predicted) pair among the wrong predictions, ties by name."""
    wrong = true != predicted
    pairs = pd.DataFrame({"true": true[wrong], "predicted": predicted[wrong].replace("", MISSING)})
    counts = pairs.value_counts().rename("clips").reset_index()
    return counts.sort_values(["clips", "true", "predicted"], ascending=[False, True, True]).head(top)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("submission")
    p.add_argument("answer_key")
    p.add_argument("--report", action="store_true",
                   help="also per-class precision, recall and F1, and the commonest confusions")
    args = p.parse_args(argv)
    try:
        true, predicted = aligned(args.submission, args.answer_key)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as e:
        p.error(f"both files must be CSV with columns ID and Class ({type(e).__name__}: {e})")
    accuracy, missing = accuracy_and_missing(true, predicted)
    print(f"test accuracy: {accuracy:.3f}" + (f" ({missing} IDs missing from the submission)" if missing else ""))
    if args.report:
        print(classification_report(true, predicted, labels=sorted(true.unique()), digits=3, zero_division=0))
        print("commonest confusions (true -> predicted: clips):")
        for row in confusions(true, predicted).itertuples():
            print(f"  {row.true} -> {row.predicted}: {row.clips}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
