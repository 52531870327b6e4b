"""The packaged benchmark prompt sets load by name with their categories; user files by path."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo_ray.config import EvalConfig
from tpo_ray.eval.prompt_sets import PACKAGED, content_ids, eval_prompts, load_prompts


def test_partiprompts_has_its_1632_prompts_in_12_categories_quotes_kept() -> None:
    prompts = load_prompts("parti")
    assert len(prompts) == 1632 and len({p.category for p in prompts}) == 12
    assert prompts[0].text == "bond" and prompts[0].id == "parti-" + hashlib.sha1(b"bond").hexdigest()[:10]
    assert any(p.text.startswith('"G I G G L E" painted') for p in prompts)  # a leading quote is text, not quoting
    assert all(p.text for p in prompts)


def test_t2i_compbench_has_300_prompts_per_category() -> None:
    prompts = load_prompts("t2i_compbench")
    assert Counter(p.category for p in prompts) == {c: 300 for c in
                                                    ("color", "shape", "texture", "spatial", "non_spatial", "complex")}
    assert prompts[0].text == "a green bench and a blue bowl"


def test_every_packaged_set_is_named_in_the_readme_with_a_licence() -> None:
    from importlib import resources

    folder = resources.files("tpo_ray.eval").joinpath("prompts")
    readme = folder.joinpath("README.md").read_text()
    for name, file in PACKAGED.items():
        assert f"`{name}`" in readme and file in readme
    assert folder.joinpath("LICENSE-parti").read_text().lstrip().startswith("Apache License")
    assert folder.joinpath("LICENSE-t2i-compbench").read_text().startswith("MIT License")
    assert EvalConfig().prompts in PACKAGED


def test_user_files_text_jsonl_and_parquet(tmp_path) -> None:
    text = tmp_path / "mine.txt"
    text.write_text("a red car\n\n  a blue bus  \n")
    assert [p.text for p in load_prompts(str(text))] == ["a red car", "a blue bus"]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"caption": "a cat", "category": "animals"}, {"caption": "a dog"}]))
    got = load_prompts(str(jsonl))
    assert [(p.text, p.category) for p in got] == [("a cat", "animals"), ("a dog", None)]
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"]}), parquet)
    assert [p.id for p in load_prompts(str(parquet))] == content_ids("mine", ["x", "y"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt column"}))
    with pytest.raises(ValueError, match=r"no prompt column .* it has \['text'\]"):
        load_prompts(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a packaged set"):
        load_prompts("drawbench")


def cfg_for(prompts: str, max_prompts: int | None = None, seed: int = 0, id_column: str | None = None):
    return SimpleNamespace(eval=EvalConfig(prompts=prompts, max_prompts=max_prompts, prompt_id_column=id_column),
                           train=SimpleNamespace(seed=seed))


def test_an_edited_file_keeps_the_ids_of_the_prompts_it_did_not_change(tmp_path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("a red car\na blue bus\na green tram\n")
    before = {p.text: p.id for p in load_prompts(str(path))}
    path.write_text("a yellow bike\na blue bus\na green tram\na red car\n")  # one inserted on top, one moved
    after = {p.text: p.id for p in load_prompts(str(path))}
    assert {t: after[t] for t in before} == before
    assert before["a red car"] == "mine-" + hashlib.sha1(b"a red car").hexdigest()[:10]
    assert len(set(after.values())) == 4


def test_exact_repeats_get_a_suffix_in_order_and_packaged_ids_are_unique() -> None:
    assert content_ids("s", ["x", "y", "x", "x"]) == [f"s-{hashlib.sha1(b'x').hexdigest()[:10]}",
                                                      f"s-{hashlib.sha1(b'y').hexdigest()[:10]}",
                                                      f"s-{hashlib.sha1(b'x').hexdigest()[:10]}-2",
                                                      f"s-{hashlib.sha1(b'x').hexdigest()[:10]}-3"]
    for name in [*PACKAGED, "scenes"]:
        ids = [p.id for p in load_prompts(name)]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"{name}-") for i in ids)


def test_tsv_and_csv_files_are_tables_with_a_header_and_a_category(tmp_path) -> None:
    tsv = tmp_path / "mine.tsv"
    tsv.write_text('Prompt\tCategory\n"quoted" at the start\tquotes\na cat\tanimals\n')
    assert [(p.text, p.category) for p in load_prompts(str(tsv))] == [('"quoted" at the start', "quotes"),
                                                                      ("a cat", "animals")]
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text('id,prompt,category\nq1,"a cat, sleeping",animals\nq2,a dog,animals\n')
    got = load_prompts(str(csv_file))
    assert [(p.text, p.category) for p in got] == [("a cat, sleeping", "animals"), ("a dog", "animals")]
    assert [p.id for p in load_prompts(str(csv_file), id_column="id")] == ["q1", "q2"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\na cat\tx\n")
    with pytest.raises(ValueError, match=r"no prompt column .* it has \['label', 'text'\]"):
        load_prompts(str(bad))


def test_lines_split_at_newlines_only_a_bom_is_stripped_and_categories_become_strings(tmp_path) -> None:
    text = tmp_path / "mine.txt"
    text.write_bytes("\ufeffa cat\u2028on a mat\r\na dog\x85running\r\n".encode())
    assert [p.text for p in load_prompts(str(text))] == ["a cat\u2028on a mat", "a dog\x85running"]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"prompt": "a cat", "category": 3}) + "\n"
                       + json.dumps({"prompt": "a dog", "category": ""}) + "\n").encode())
    assert [(p.text, p.category) for p in load_prompts(str(jsonl))] == [("a cat", "3"), ("a dog", None)]
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"prompt": ["x", "y"], "category": [1, 2]}), parquet)
    assert [p.category for p in load_prompts(str(parquet))] == ["1", "2"]


def test_an_id_column_gives_the_ids_and_bad_or_repeated_ids_are_refused(tmp_path) -> None:
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"id": 7, "prompt": "a cat"}, {"id": "p-2", "prompt": "a dog"}]))
    assert [p.id for p in eval_prompts(cfg_for(str(jsonl), id_column="id"))] == ["7", "p-2"]
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"id": 1, "prompt": "a cat"}, {"id": 1, "prompt": "a dog"}]))
    with pytest.raises(ValueError, match=r"repeats ids \['1'\]"):
        load_prompts(str(jsonl), id_column="id")
    jsonl.write_text(json.dumps({"id": "a/b", "prompt": "a cat"}))
    with pytest.raises(ValueError, match="cannot name image files, e.g. 'a/b'"):
        load_prompts(str(jsonl), id_column="id")
    with pytest.raises(ValueError, match="no column eval.prompt_id_column='key'"):
        load_prompts(str(jsonl), id_column="key")
    with pytest.raises(ValueError, match="is a packaged set"):
        load_prompts("parti", id_column="id")


def test_max_prompts_is_a_seeded_subset_balanced_across_categories() -> None:
    compbench = eval_prompts(cfg_for("t2i_compbench", 12))
    assert Counter(p.category for p in compbench) == {c: 2 for c in
                                                       ("color", "shape", "texture", "spatial", "non_spatial", "complex")}
    assert compbench == eval_prompts(cfg_for("t2i_compbench", 12))  # same N and seed: same subset
    assert eval_prompts(cfg_for("t2i_compbench", 24))[:12] == compbench  # a larger N extends it
    other = eval_prompts(cfg_for("t2i_compbench", 12, seed=1))
    assert other != compbench and len({p.category for p in other}) == 6
    parti = eval_prompts(cfg_for("parti", 12))
    assert len({p.category for p in parti}) == 12
    first = load_prompts("parti")[:12]
    assert {p.category for p in first} == {"Abstract"} and parti != first
    assert eval_prompts(cfg_for("t2i_compbench")) == load_prompts("t2i_compbench")  # null: all, in file order
