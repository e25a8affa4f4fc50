"""alice-gpu evaluate: golden pairwise and ranking figures, per transform, through the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image, ImageOps

from alice_gpu.search.evaluate import (Truth, read_truth, score_pairs, score_rankings,
                                       score_relations)
from conftest import run_cli


def _truth(groups: dict[str, str], transforms: dict[str, str] | None = None) -> Truth:
    return Truth(groups, {p: (transforms or {}).get(p, "") for p in groups})


def test_pair_figures_golden():
    truth = _truth({"a": "1", "b": "1", "c": "1", "d": "2", "e": "3"}, {"c": "mirror"})
    # true pairs: ab ac bc; predicted: ab, de (wrong), and x-y outside the truth (ignored)
    scores = score_pairs(truth, [["a", "b"], ["d", "e"], ["x", "y"]])
    overall = scores[""].figures()
    assert (overall["true_pairs"], overall["predicted_pairs"], overall["correct_pairs"]) == (3, 2, 1)
    assert overall["precision"] == 0.5 and overall["recall"] == 0.3333
    assert overall["f1"] == round(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3), 4)
    mirror = scores["mirror"].figures()                  # pairs touching c: ac, bc
    assert (mirror["true_pairs"], mirror["predicted_pairs"], mirror["recall"]) == (2, 0, 0.0)


def test_relation_figures_golden():
    """a, b, c: one capture and its copies; d: another capture of the same subject."""
    groups = {"a": "1", "b": "1", "c": "1", "d": "1", "e": "2", "f": "2"}
    relation = {"a": "copy", "b": "copy", "c": "copy", "d": "lookalike", "e": "lookalike",
                "f": "lookalike"}
    truth = Truth(groups, {p: "" for p in groups}, relation)
    # copies: ab ac bc; look-alikes: ad bd cd ef. Predicted: ab, ad (a look-alike), ef
    # (a look-alike) and a-x (x outside the truth: a wrong pair)
    pred = {("a", "b"), ("a", "d"), ("e", "f"), ("a", "x")}
    rel = score_relations(truth, pred)
    assert rel["copies"]["true_pairs"] == 3 and rel["copies"]["correct_pairs"] == 1
    assert rel["copies"]["precision"] == 0.25 and rel["copies"]["recall"] == 0.3333
    assert rel["lookalikes"] == {"pairs": 4, "called_duplicates": 2}
    assert score_relations(Truth(groups, {p: "" for p in groups}), pred) is None


def test_ranking_figures_golden():
    truth = _truth({"a": "1", "b": "1", "c": "1", "d": "2"})
    ranked = {"a": ["a", "b", "d", "c"], "b": ["b", "a", "c"], "c": ["d", "c"], "d": ["d"]}
    scores = score_rankings(truth, ranked.__getitem__)[""].figures()
    assert scores["queries"] == 3                        # d is a singleton: not a query
    # N-S (top 4, query included): a 3, b 3, c 1; AP: a (1 + 2/3)/2, b 1, c 0/2
    assert scores["ns_score"] == round(7 / 3, 4)
    assert scores["map"] == round(((1 + 2 / 3) / 2 + 1 + 0) / 3, 4)


@pytest.fixture
def transformed_set(tmp_path, photos):
    """Six photos, each with a 1/3 downscale and a JPEG-quality-20 copy, and four distractors."""
    sources = sorted((photos / "images").iterdir())
    rows = ["file,group,transform"]
    for n, src in enumerate(sources[:6]):
        shutil.copy2(src, tmp_path / src.name)
        rows.append(f"{src.name},g{n},")
        with Image.open(src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.resize((im.width // 3, im.height // 3), Image.LANCZOS).save(
                tmp_path / f"small_{src.name}", quality=90)
            im.save(tmp_path / f"q20_{src.name}", quality=20)
        rows += [f"small_{src.name},g{n},downscale", f"q20_{src.name},g{n},jpeg20"]
    for n, src in enumerate(sources[6:10]):
        shutil.copy2(src, tmp_path / src.name)
        rows.append(f"{src.name},d{n},")
    (tmp_path / "truth.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "hashes.yaml").write_text("features:\n  embed: false\n")
    return tmp_path


def test_evaluate_cli_reports_per_transform(transformed_set):
    root = transformed_set
    code, out, err = run_cli("evaluate", root / "truth.csv", "--similar-by", "phash",
                             "--db", root / "db", "--config", root / "hashes.yaml", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["files"] == 22 and doc["groups"] == 10
    assert doc["duplicates"]["true_pairs"] == 18 and doc["duplicates"]["precision"] == 1.0
    assert set(doc["per_transform"]) == {"downscale", "jpeg20"}
    for name in ("downscale", "jpeg20"):
        fig = doc["per_transform"][name]
        assert fig["duplicates"]["true_pairs"] == 12 and fig["duplicates"]["recall"] >= 0.9
        assert fig["similar"]["queries"] == 6 and fig["similar"]["map"] >= 0.9
    code, out, err = run_cli("evaluate", root / "truth.csv", "--similar-by", "phash",
                             "--db", root / "db", "--config", root / "hashes.yaml")
    assert code == 0 and "downscale" in out and "N-S" in out


def test_a_bad_ground_truth_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.csv").write_text("path,label\nx.jpg,1\n")
    code, out, err = run_cli("evaluate", tmp_path / "bad.csv", "--db", tmp_path / "db")
    assert code == 2 and "file,group" in err and err.count("\n") == 1
    (tmp_path / "gone.csv").write_text("file,group\nmissing.jpg,1\n")
    code, out, err = run_cli("evaluate", tmp_path / "gone.csv", "--db", tmp_path / "db")
    assert code == 2 and "no such file" in err and "Traceback" not in err


def test_the_labelled_near_duplicates_csv_reads_under_a_root(near_dups):
    """The CSV shipped in tests/ names near_duplicates' files relative to that folder."""
    from pathlib import Path

    csv_path = Path(__file__).parent / "data" / "near_duplicates_relations.csv"
    truth = read_truth(csv_path, near_dups)
    assert len(truth.group) == 83 and set(truth.relation.values()) == {"copy", "lookalike"}
    views = [p for p in truth.group if "/ukbench/" in p]
    assert len(views) == 56 and all(truth.relation[p] == "lookalike" for p in views)
    assert sum(truth.relation[p] == "lookalike" for p in truth.group) == 56 + 3   # + Holidays


def test_evaluate_reports_copies_and_look_alikes(transformed_set):
    """The same set with a relation column and the CSV kept apart from the images: every
    copy pair found, and two distractors labelled another capture of g0 never grouped."""
    root = transformed_set
    rows = (root / "truth.csv").read_text().splitlines()
    out_rows = [rows[0] + ",relation"]
    for row in rows[1:]:
        name, group, transform = row.split(",")
        other = group in ("d0", "d1")                  # said to be other shots of g0
        out_rows.append(f"{name},{'g0' if other else group},{transform},"
                        f"{'lookalike' if other else 'copy'}")
    elsewhere = root / "truth"
    elsewhere.mkdir()
    (elsewhere / "labelled.csv").write_text("\n".join(out_rows) + "\n")
    code, out, err = run_cli("evaluate", elsewhere / "labelled.csv", "--root", root,
                             "--similar-by", "phash", "--db", root / "db", "--config",
                             root / "hashes.yaml", "--json")
    assert code == 0, err
    rel = json.loads(out)["relations"]
    assert rel["copies"]["true_pairs"] == 18 and rel["copies"]["recall"] >= 0.9
    # d0 and d1 with each other and with g0's three files: 7 pairs, none grouped
    assert rel["lookalikes"] == {"pairs": 7, "called_duplicates": 0}
    code, out, err = run_cli("evaluate", elsewhere / "labelled.csv", "--root", root,
                             "--similar-by", "phash", "--db", root / "db", "--config",
                             root / "hashes.yaml")
    assert code == 0 and "look-alike" in out and "copy" in out
    (elsewhere / "odd.csv").write_text("file,group,relation\n" + rows[1].split(",")[0]
                                       + ",g0,twin\n")
    code, _, err = run_cli("evaluate", elsewhere / "odd.csv", "--root", root, "--db", root / "db")
    assert code == 2 and "relation must be copy or lookalike" in err and err.count("\n") == 1
