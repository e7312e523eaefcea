"""score_submission.py on a small answer key and submission."""
import pandas as pd
import pytest

import score_submission


def write(path, rows):
    pd.DataFrame(rows, columns=["ID", "Class"]).to_csv(path, index=False)
    return path


def test_report_gives_per_class_recall_and_the_commonest_confusions(tmp_path, capsys):
    key = write(tmp_path / "key.csv", [(f"{i}", c) for i, c in enumerate(["kick"] * 4 + ["snare"] * 4 + ["hat"] * 2)])
    # kick: all right; snare: two taken for kicks, one missing; hat: one taken for a snare
    sub = write(tmp_path / "sub.csv", [("0", "kick"), ("1", "kick"), ("2", "kick"), ("3", "kick"),
                                       ("4", "snare"), ("5", "kick"), ("6", "kick"),
                                       ("8", "hat"), ("9", "snare"), ("9", "hat")])
    assert score_submission.main([str(sub), str(key), "--report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    split = lines.index("commonest confusions (true -> predicted: clips):")
    assert lines[0] == "test accuracy: 0.600 (1 IDs missing from the submission)"
    recall = {ln.split()[0]: float(ln.split()[2]) for ln in lines[:split] if ln.split()[:1] in (["kick"], ["snare"], ["hat"])}
    assert recall == {"kick": 1.0, "snare": 0.25, "hat": 0.5}
    confusions = lines[split + 1:]
    assert confusions == ["  snare -> kick: 2", "  hat -> snare: 1", "  snare -> (missing): 1"]  # ties by name


def test_without_report_only_the_accuracy_is_printed(tmp_path, capsys):
    key = write(tmp_path / "key.csv", [("a", "x"), ("b", "y")])
    sub = write(tmp_path / "sub.csv", [("a", "x"), ("b", "x")])
    assert score_submission.main([str(sub), str(key)]) == 0
    assert capsys.readouterr().out == "test accuracy: 0.500\n"


def test_a_file_that_is_not_a_submission_is_a_one_line_error(tmp_path, capsys):
    key = write(tmp_path / "key.csv", [("a", "x")])
    (tmp_path / "empty.csv").write_text("")
    pd.DataFrame({"id": ["a"], "label": ["x"]}).to_csv(tmp_path / "other.csv", index=False)
    for bad in ("missing.csv", "empty.csv", "other.csv"):
        with pytest.raises(SystemExit) as stop:
            score_submission.main([str(tmp_path / bad), str(key)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error: both files must be CSV with columns ID and Class" in err[-1] and "Traceback" not in "".join(err)
