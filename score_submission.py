"""Score a submission CSV against an answer key (both ID,Class), as a competition would.

    python score_submission.py outputs/submission_cnn_v2.csv data/demo/test_labels.csv
"""
import argparse
import sys

import pandas as pd
from sklearn.metrics import accuracy_score


def aligned(submission_csv, key_csv) -> tuple[pd.Series, pd.Series]:
    """(true, predicted) classes for every ID of the answer key; a missing ID is predicted ''."""
    key = pd.read_csv(key_csv, dtype=str)
    sub = pd.read_csv(submission_csv, dtype=str).drop_duplicates("ID").set_index("ID")["Class"]
    return key["Class"], key["ID"].map(sub).fillna("")


def score(submission_csv, key_csv) -> tuple[float, int]:
    """Accuracy over the answer key's IDs; an ID missing from the submission counts as wrong."""
    true, predicted = aligned(submission_csv, key_csv)
    return accuracy_score(true, predicted), int((predicted == "").sum())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("submission")
    p.add_argument("answer_key")
    args = p.parse_args()
    accuracy, missing = score(args.submission, args.answer_key)
    print(f"test accuracy: {accuracy:.3f}" + (f" ({missing} IDs missing from the submission)" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
